"""Layers that store number formats or rotate: exact stored bytes, save/load, casts, the function kept."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from memopt_core.compression.compress import compress_copy
from memopt_core.compression.format_layers import FormatLinear, RotatedLinear
from memopt_core.compression.layers import QuantLinear, from_spec, weight_storage_bytes
from memopt_core.compression.prune import prune_
from memopt_core.compression.quantize import quantize_
from memopt_core.compression.walk import effective_weight, target_linears
from memopt_core.config import ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.primitives.formats.hadamard import random_signs, rotate_weight
from memopt_core.primitives.formats.registry import FORMAT_NAMES, dequantize_format, format_nbytes, quantize_format

FORMAT_CONFIGS = [QuantConfig(format=name) for name in FORMAT_NAMES] + [
    QuantConfig(format="nf4", double_quant=True), QuantConfig(format="fp8-e4m3", granularity="per-tensor")]


def linear(in_f=256, out_f=48, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


@pytest.mark.parametrize("cfg", FORMAT_CONFIGS, ids=lambda c: c.label)
def test_stored_bytes_are_the_formats_and_forward_uses_its_weight(cfg):
    source = linear()
    layer = FormatLinear.from_linear(source, cfg)
    expected = format_nbytes(cfg.format, 48, 256, cfg.double_quant, cfg.granularity == "per-channel")
    assert weight_storage_bytes(layer) == expected  # codes + every scale byte; the bias is apart
    reference = dequantize_format(quantize_format(source.weight, cfg.format, cfg.double_quant,
                                                  cfg.granularity == "per-channel"))
    assert torch.equal(layer.dequantized_weight(), reference)
    x = torch.randn(3, 256)
    assert torch.allclose(layer(x), nn.functional.linear(x, reference, source.bias), atol=1e-6)


@pytest.mark.parametrize("cfg", FORMAT_CONFIGS + [QuantConfig(bits=4, rotate="hadamard"),
                                                  QuantConfig(format="q4_k", rotate="hadamard")], ids=lambda c: c.label)
def test_spec_and_safetensors_rebuild_the_same_layer(cfg):
    model = nn.Sequential(linear(seed=1))
    quantize_(model, cfg, ["0"])
    layer = model[0]
    rebuilt = from_spec(layer.spec())
    rebuilt.load_state_dict(load(save({k: v.contiguous() for k, v in layer.state_dict().items()})))
    x = torch.randn(4, 256)
    assert torch.equal(rebuilt(x), layer(x))
    assert weight_storage_bytes(rebuilt) == weight_storage_bytes(layer)


def test_a_model_cast_keeps_stored_float_buffers():
    layer = FormatLinear.from_linear(linear(), QuantConfig(format="nf4"))
    fp8 = FormatLinear.from_linear(linear(), QuantConfig(format="fp8-e4m3"))
    before = weight_storage_bytes(layer), weight_storage_bytes(fp8)
    layer.to(torch.bfloat16)
    fp8.half()
    assert layer.absmax.dtype == torch.float32 and fp8.values.dtype == torch.float8_e4m3fn
    assert (weight_storage_bytes(layer), weight_storage_bytes(fp8)) == before
    assert layer.dequantized_weight().dtype == torch.bfloat16
    assert fp8(torch.randn(2, 256, dtype=torch.float16)).dtype == torch.float16


def test_pruned_zeros_stay_zero_where_the_format_has_no_exact_zero():
    model = nn.Sequential(linear(in_f=64, seed=2))  # 64 columns: q3_k falls back to IQ4_NL, which has no 0 level
    prune_(model, PruneConfig(ratio=0.5), ["0"])
    quantize_(model, QuantConfig(format="q3_k"), ["0"], pruned=True)
    layer = model[0]
    assert layer.meta["layout"] == "iq4_nl" and layer.mask is not None
    assert (effective_weight(layer) == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    unpruned = nn.Sequential(linear(in_f=64, seed=2))
    with torch.no_grad():
        unpruned[0].weight[0, :3] = 0.0  # a few exact zeros of an unpruned weight: no mask for them
    quantize_(unpruned, QuantConfig(format="q3_k"), ["0"])
    assert unpruned[0].mask is None


def test_rotation_with_quantization_off_keeps_the_model_function(tiny_llama):
    """Every targeted Linear replaced by its rotated float weight, inputs rotated at run time."""
    rotated = compress_copy(tiny_llama, RunConfig(ModelSpec("tiny-llama"))).model  # a structural copy, nothing compressed
    for name, module in target_linears(rotated).items():
        signs = random_signs(module.in_features)
        inner = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        inner.weight = nn.Parameter(rotate_weight(module.weight.detach(), signs), requires_grad=False)
        if module.bias is not None:
            inner.bias = module.bias
        parent, _, child = name.rpartition(".")
        setattr(rotated.get_submodule(parent), child, RotatedLinear(inner, signs))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = tiny_llama(ids).logits, rotated(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    layer = rotated.get_submodule("model.layers.0.self_attn.q_proj")
    original = tiny_llama.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert torch.allclose(layer.dequantized_weight(), original, atol=1e-6)  # effective weight in the original basis


def test_rotated_quantization_stores_signs_and_reports_the_original_basis():
    source = linear(seed=3)
    model = nn.Sequential(source)
    info = quantize_(model, QuantConfig(bits=8, rotate="hadamard"), ["0"])["0"]
    layer = model[0]
    assert isinstance(layer, RotatedLinear) and isinstance(layer.inner, QuantLinear)
    plain = quantize_(nn.Sequential(linear(seed=3)), QuantConfig(bits=8), ["0"])["0"]
    assert info["bits"] == pytest.approx(plain["bits"] + 1 / 48)  # + one sign bit per input column (256 / 8 bytes)
    assert info["sqnr_db"] > 35  # 8-bit, measured against the original weight: the rotation is undone
    x = torch.randn(5, 256)
    assert torch.allclose(layer(x), source(x), atol=0.02)
