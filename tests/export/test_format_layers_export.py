"""Layers holding a number format (and rotated layers) export as the weights memopt computes with."""
from __future__ import annotations

import pytest

from memopt_core.compression.walk import linear_layers
from memopt_core.config import QuantConfig
from memopt_core.export.service import ExportRequest, export
from memopt_core.export.verify import gguf_weight_errors
from support import byte_tokenizer, compressed, source, tiny_llama


@pytest.mark.parametrize("quant", [QuantConfig(format="nf4", rotate="hadamard"), QuantConfig(format="mxfp4")],
                         ids=lambda q: q.label)
def test_format_layers_are_written_as_their_dequantized_weights(tmp_path, quant):
    original = tiny_llama()
    model = compressed(original, quant)
    assert list(linear_layers(model)) == list(linear_layers(original))  # a rotated layer is one layer, not two
    report = export(source(model, byte_tokenizer()), ExportRequest("gguf", "F32"), tmp_path / "out")
    assert {p.target for p in report.layers} == {"F32"}
    errors = gguf_weight_errors(tmp_path / "out" / "model.gguf", model)
    assert errors and max(errors.values()) == 0.0  # F32 holds memopt's weights (original basis) exactly
