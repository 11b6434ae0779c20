"""Exports of the bundled real models (marked ``real_model``: SmolLM2's GGUF conversion is shared
through the test cache; each test writes a few hundred MiB under its temporary folder).

- SmolLM2-135M ships as a Q4_1 GGUF and memopt's 4-bit asymmetric g32 float-minimum grid is Q4_1's:
  re-exporting it at ``--type Q4_1`` must give back its Q4_1 blocks byte for byte, read with
  ``gguf.GGUFReader`` from both files (q/k rows in llama.cpp's order included).
- all-MiniLM-L6-v2 through ONNX Runtime: the float graph's sentence embeddings equal PyTorch's.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from memopt_core.compression.compress import compress_copy
from memopt_core.config import EvalConfig, ModelSpec, RunConfig
from memopt_core.export.formats import GGUF_TYPES
from memopt_core.export.service import ExportRequest, ExportSource, export
from memopt_core.export.sources import source_from_run
from memopt_core.loading.bundled import smollm2_gguf_path
from memopt_core.loading.models import load_model
from memopt_core.runs.workbench import Workbench

pytestmark = pytest.mark.real_model


def _q4_1_blocks(path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data).copy() for t in gguf.GGUFReader(str(path)).tensors if t.tensor_type.name == "Q4_1"}


def test_bundled_q4_1_model_re_exported_at_q4_1_gives_back_its_blocks(tmp_path):
    spec = ModelSpec("smollm2-135m")
    loaded = load_model(spec)
    model = compress_copy(loaded.model, RunConfig(spec, quant=GGUF_TYPES["Q4_1"].quant_config())).model
    report = export(ExportSource(model, loaded.tokenizer, "causal-lm", loaded.name, {}), ExportRequest("gguf", "Q4_1"),
                    tmp_path / "out")
    assert report.to_dict()["layers_exact"] == "210 of 210"
    theirs, ours = _q4_1_blocks(smollm2_gguf_path()), _q4_1_blocks(tmp_path / "out" / "model.gguf")
    assert len(theirs) >= 210 and set(theirs) <= set(ours)
    for name, blocks in theirs.items():
        assert np.array_equal(ours[name], blocks), name


def test_minilm_float_graph_in_onnx_runtime_matches_pytorch(tmp_path):
    spec = ModelSpec("minilm-l6")
    source = source_from_run(Workbench.load(spec), RunConfig(spec, eval=EvalConfig(gen_tokens=0, zero_shot=False)))
    report = export(source, ExportRequest("onnx", "fp32", verify=True), tmp_path / "out")
    assert len(source.sentences) == 200
    assert report.roundtrip.cosine_to_original == pytest.approx(1.0, abs=1e-5)
    assert report.roundtrip.cosine_to_memopt == pytest.approx(1.0, abs=1e-5)
