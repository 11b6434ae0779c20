"""compressed-tensors pack-quantized folders: int32 words against hand-worked packing, memopt's own
scales exported as they are, and transformers + compressed-tensors loading the same model back."""
import json

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from safetensors.torch import load_file

from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.export.compressed_tensors import signed_codes
from memopt_core.export.layer_plan import grid_of
from memopt_core.export.service import ExportRequest, export
from memopt_core.export.verify import load_compressed_tensors
from support import byte_tokenizer, compressed, source, tiny_llama, windows


def test_int4_words_hold_eight_nibbles_offset_by_8():
    signed = torch.tensor([list(range(-8, 8)) * 2], dtype=torch.int8)  # 32 values, stored as value + 8
    words = pack_to_int32(signed, 4)
    # element c sits in word c // 8 at bits 4 * (c % 8): nibbles 0..7 then 8..15
    assert words.tolist() == [[0x76543210, 0xFEDCBA98 - 2**32, 0x76543210, 0xFEDCBA98 - 2**32]]


def test_memopt_codes_become_signed_values_with_the_same_differences():
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False))
    grid = grid_of(model.model.layers[0].mlp.up_proj)
    values, zero = signed_codes(grid, 4)
    assert torch.equal(values.int() - zero.int().repeat_interleave(32, dim=1), grid.codes.int() - grid.zero.int().repeat_interleave(32, dim=1))
    assert int(values.min()) >= -8 and int(values.max()) <= 7


@pytest.mark.parametrize("type_name, group, quant", [
    ("W4A16", 32, QuantConfig(bits=4, granularity="group", group_size=32)),
    ("W8A16", None, QuantConfig(bits=8)),
    ("W4A16-asym", 32, QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False)),
])
def test_folder_loads_back_to_memopts_weights(tmp_path, type_name, group, quant):
    model = compressed(tiny_llama(), quant)
    report = export(source(model, byte_tokenizer(), windows()), ExportRequest("compressed-tensors", type_name, group, True),
                    tmp_path / "out")
    assert all(p.exact and p.how == "copied" for p in report.layers)
    folder = tmp_path / "out"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"], config["ignore"]) == ("compressed-tensors", "pack-quantized", ["lm_head"])
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (quant.bits, group, quant.symmetric)
    state = load_file(str(folder / "model.safetensors"))
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight_scale"], layer.scale)  # memopt's, not re-derived
    assert state["model.layers.0.self_attn.q_proj.weight_packed"].dtype == torch.int32
    assert ("model.layers.0.self_attn.q_proj.weight_zero_point" in state) == (not quant.symmetric)
    loaded = load_compressed_tensors(folder)
    ours = layer.dequantized_weight()
    theirs = loaded.model.layers[0].self_attn.q_proj.weight
    # the library multiplies in the scale's fp16: equal up to fp16 rounding of each product
    assert torch.allclose(theirs, ours, rtol=2 ** -11, atol=0)
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=1e-3)


def test_float_minimum_is_requantized_with_an_integer_zero_point_and_said_so(tmp_path):
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False,
                                                 zero_point="float"))
    report = export(source(model, byte_tokenizer()), ExportRequest("compressed-tensors"), tmp_path / "out")
    assert {(p.target, p.how, p.exact) for p in report.layers} == {("W4A16-asym", "re-quantized", False)}
    assert "float minimum has no compressed-tensors field" in report.layers[0].note


def test_bad_requests_write_nothing(tmp_path):
    dense = source(compressed(tiny_llama(), None), byte_tokenizer())
    with pytest.raises(ConfigError, match="quantizes none"):
        export(dense, ExportRequest("compressed-tensors"), tmp_path / "dense")
    g48 = source(compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32)), byte_tokenizer())
    with pytest.raises(ConfigError, match="not a multiple of group size 48"):
        export(g48, ExportRequest("compressed-tensors", "W4A16", 48), tmp_path / "g48")
    assert list(tmp_path.iterdir()) == []
