"""The real SmolLM2-135M: GGUF -> cached safetensors conversion and what the weights look like.

The first test converts the GGUF (about 20 s) into the session's test cache; the others read
the cached folder. Perplexity checks live elsewhere.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memopt_core.config import ModelSpec
from memopt_core.loading import bundled
from memopt_core.loading.cache import cache_dir
from memopt_core.loading.models import load_model, weights_checksum

pytestmark = pytest.mark.real_model

SMOLLM2_PARAMS = 134_515_008


def test_first_load_converts_the_gguf_into_a_cached_safetensors_folder():
    loaded = load_model(ModelSpec("smollm2-135m"))
    assert (loaded.kind, loaded.architecture, loaded.is_random) == ("causal-lm", "LlamaForCausalLM", False)
    assert loaded.num_params == SMOLLM2_PARAMS and loaded.label == "SmolLM2-135M-Instruct"
    assert loaded.model.config.vocab_size == len(loaded.tokenizer) == 49152
    folder = cache_dir() / "models" / "smollm2-135m"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert str(folder) in loaded.source


def test_second_load_reads_the_cached_folder_without_touching_the_gguf(monkeypatch):
    first = weights_checksum(load_model(ModelSpec("smollm2-135m")).model)

    def no_gguf():
        raise AssertionError("the GGUF was read although the converted folder is cached")

    monkeypatch.setattr(bundled, "smollm2_gguf_path", no_gguf)
    again = load_model(ModelSpec("smollm2-135m"))
    assert weights_checksum(again.model) == first and again.num_params == SMOLLM2_PARAMS


def test_converted_weights_equal_an_independent_gguf_dequantization():
    import gguf

    reader = gguf.GGUFReader(bundled.smollm2_gguf_path())
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")  # v is not row-permuted
    expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
    model = load_model(ModelSpec("smollm2-135m")).model
    assert torch.equal(model.model.layers[0].self_attn.v_proj.weight, expected)  # [192, 576]


def test_q_proj_weights_lie_on_a_4bit_group_32_grid():
    model = load_model(ModelSpec("smollm2-135m")).model
    for layer in model.model.layers:
        weight = layer.self_attn.q_proj.weight  # [576, 576]
        blocks = weight.reshape(-1, 32).sort(dim=1).values  # [576 * 18, 32]
        distinct = 1 + (blocks.diff(dim=1) != 0).sum(dim=1)
        assert int(distinct.max()) <= 16
    # Not vacuous: a block of random floats has 32 distinct values.
    assert len(torch.randn(32).unique()) == 32


def test_cached_model_loads_in_bfloat16():
    loaded = load_model(ModelSpec("smollm2-135m", dtype="bfloat16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.num_params == SMOLLM2_PARAMS
