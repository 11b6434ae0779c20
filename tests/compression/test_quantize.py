"""The quantize_ walker on tiny models: replaced modules, quality, storage, untouched originals."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from memopt_core.compression.layers import CastLinear, QuantLinear, module_storage_bytes
from memopt_core.compression.quantize import quantize_
from memopt_core.compression.walk import effective_weight, target_linears
from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.quant import dequantize, quantize_weight

G128_ASYM = QuantConfig(bits=4, granularity="group", group_size=128, symmetric=False)
G128_SYM = QuantConfig(bits=4, granularity="group", group_size=128)


def structural_copy(model: nn.Module) -> nn.Module:
    """New modules sharing every tensor with ``model`` (how the app copies a cached original)."""
    return copy.deepcopy(model, memo={id(t): t for t in list(model.parameters()) + list(model.buffers())})


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def ids():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def test_targets_become_quant_linears_and_logits_track_bits(tiny_llama, ids):
    reference = logits(tiny_llama, ids)
    errors = {}
    for bits in (8, 2):
        model = structural_copy(tiny_llama)
        names = list(target_linears(model))
        info = quantize_(model, QuantConfig(bits=bits), names)
        assert set(info) == set(names) and len(names) == 14
        assert all(isinstance(model.get_submodule(n), QuantLinear) for n in names)
        assert all(model.get_submodule(n).bits == bits and not info[n]["simulated"] for n in names)
        errors[bits] = relative_error(logits(model, ids), reference)
    assert errors[8] < 0.02
    assert errors[2] > 0.2


def test_original_shared_tensors_stay_bit_identical(tiny_llama, ids):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    reference = logits(tiny_llama, ids)
    for cfg in (G128_ASYM, QuantConfig(bits=3, storage="fake"), QuantConfig(method="bf16")):
        model = structural_copy(tiny_llama)
        quantize_(model, cfg, list(target_linears(model)))
        assert model.model.embed_tokens.weight is tiny_llama.model.embed_tokens.weight  # still shared
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(logits(tiny_llama, ids), reference)


def test_info_reports_bits_and_sqnr(tiny_llama):
    names = list(target_linears(tiny_llama))
    sources = {n: tiny_llama.get_submodule(n).weight.detach().clone() for n in names}
    info = quantize_(tiny_llama, QuantConfig(bits=4), names)
    for name in names:
        source = sources[name].double()
        noise = ((effective_weight(tiny_llama.get_submodule(name)).double() - source) ** 2).sum()
        assert info[name]["sqnr_db"] == pytest.approx(10 * math.log10((source ** 2).sum() / noise))
        assert info[name]["bits"] == 4 + 16 / source.shape[1]  # one fp16 scale per row
        assert 15 < info[name]["sqnr_db"] < 25


@pytest.mark.parametrize("cfg, bpw", [(G128_ASYM, 4 + 32 / 128), (G128_SYM, 4 + 16 / 128),
                                      (QuantConfig(bits=3, granularity="group", group_size=64), 3 + 16 / 64),
                                      (QuantConfig(method="fp16"), 16.0)])
def test_bits_per_weight_and_stored_bytes(cfg, bpw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64))
    info = quantize_(model, cfg, ["0"])
    assert info["0"]["bits"] == bpw
    layer = model[0]
    held = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert module_storage_bytes(layer) == held == bpw * 64 * 256 / 8 + 64 * 4  # + fp32 bias


def test_fake_storage_is_a_dense_linear_with_the_quantized_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64))
    source = model[0]
    cfg = QuantConfig(bits=4, granularity="group", group_size=128, symmetric=False, storage="fake")
    info = quantize_(model, cfg, ["0"])
    assert type(model[0]) is nn.Linear and model[0] is not source
    assert info["0"]["simulated"] and info["0"]["bits"] == 4.25
    assert torch.equal(model[0].weight, dequantize(quantize_weight(source.weight, cfg)))
    assert torch.equal(model[0].bias, source.bias) and model[0].bias.data_ptr() != source.bias.data_ptr()


def test_cast_methods(tiny_bert):
    names = list(target_linears(tiny_bert))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = tiny_bert(ids).last_hidden_state
    info = quantize_(tiny_bert, QuantConfig(method="bf16"), names)
    assert all(isinstance(tiny_bert.get_submodule(n), CastLinear) for n in names)
    assert all(v["bits"] == 16 and v["sqnr_db"] > 40 for v in info.values())
    with torch.no_grad():
        assert relative_error(tiny_bert(ids).last_hidden_state, reference) < 0.02


def test_pruned_zeros_survive_a_float_minimum(tiny_llama):
    name = "model.layers.0.mlp.up_proj"
    layer = tiny_llama.get_submodule(name)
    w = layer.weight.detach().clone()
    w[w.abs() < w.abs().median()] = 0.0  # magnitude pruning, 50%
    layer.weight = nn.Parameter(w)
    cfg = QuantConfig(bits=4, symmetric=False, zero_point="float")
    info = quantize_(tiny_llama, cfg, [name])
    new = tiny_llama.get_submodule(name)
    assert new.mask is not None
    assert torch.all(effective_weight(new)[w == 0] == 0)
    assert info[name]["bits"] == pytest.approx(4 + 32 / 64 + 1)  # codes + scale and minimum per row + mask


def test_requantizing_a_quantized_layer(tiny_llama):
    name = "model.layers.1.self_attn.o_proj"
    quantize_(tiny_llama, QuantConfig(bits=8), [name])
    first = effective_weight(tiny_llama.get_submodule(name))
    info = quantize_(tiny_llama, QuantConfig(bits=8), [name])
    assert isinstance(tiny_llama.get_submodule(name), QuantLinear)
    assert info[name]["sqnr_db"] > 40
    assert torch.allclose(effective_weight(tiny_llama.get_submodule(name)), first, atol=1e-3)


def test_gptq_needs_calibration(tiny_llama):
    with pytest.raises(ConfigError, match="gptq needs calibration; use memopt_core.compression.calibrate"):
        quantize_(tiny_llama, QuantConfig(method="gptq"), ["model.layers.0.mlp.up_proj"])
