"""How compressed layers compute: the fused int8 kernel against dequantize + matmul, the compute dtype."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memopt_core.compression import kernels
from memopt_core.compression.layers import QuantLinear
from memopt_core.config import QuantConfig


@pytest.fixture
def int8_layer():
    torch.manual_seed(0)
    return QuantLinear.from_linear(torch.nn.Linear(48, 40), QuantConfig(bits=8))


def test_int8_codes_flip_the_top_bit():
    packed = torch.tensor([1, 255, 128, 0], dtype=torch.uint8)  # symmetric codes are q + 128
    assert kernels.int8_codes(packed, (2, 2)).tolist() == [[-127, 127], [0, -128]]


def test_fused_int8_matches_dequantize_and_matmul(int8_layer):
    x = torch.randn(3, 5, 48)
    codes = kernels.int8_codes(int8_layer.packed, int8_layer.weight_shape)
    with torch.inference_mode():
        expected = F.linear(x, int8_layer.dequantized_weight(), int8_layer.bias)
        fused = kernels.fused_int8_linear(x, codes, int8_layer.scale, int8_layer.bias)
        fused_bf16 = kernels.fused_int8_linear(x.bfloat16(), codes, int8_layer.scale, int8_layer.bias)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert fused_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fused_bf16.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("faster", [True, False])
def test_the_layer_uses_the_kernel_measured_faster_and_says_which(int8_layer, monkeypatch, faster):
    monkeypatch.setattr(kernels, "_faster", {(40, 48, torch.float32, torch.get_num_threads()): faster})
    x = torch.randn(2, 7, 48)
    with torch.inference_mode():
        out = int8_layer(x)
        expected = F.linear(x, int8_layer.dequantized_weight(), int8_layer.bias)
    assert int8_layer.kernel == (kernels.FUSED_INT8 if faster else kernels.DEQUANTIZE)
    if faster:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(out, expected)


def test_the_decision_is_timed_once_per_shape_and_dtype(int8_layer, monkeypatch):
    monkeypatch.setattr(kernels, "_faster", {})
    calls = []
    real = kernels.fused_int8_linear
    monkeypatch.setattr(kernels, "fused_int8_linear", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        for _ in range(3):
            int8_layer(torch.randn(4, 48))
    assert list(kernels._faster) == [(40, 48, torch.float32, torch.get_num_threads())]
    assert len(calls) in (2, 5)  # two timed calls once, plus one per forward if it won


def test_other_formats_never_take_the_int8_kernel():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16)
    for config in (QuantConfig(bits=4), QuantConfig(bits=8, granularity="group", group_size=32),
                   QuantConfig(bits=8, symmetric=False)):
        layer = QuantLinear.from_linear(linear, config)
        with torch.inference_mode():
            layer(torch.randn(2, 64))
        assert layer.kernel == kernels.DEQUANTIZE, config.label


def test_packed_layers_dequantize_to_the_autocast_dtype(int8_layer, monkeypatch):
    monkeypatch.setattr(kernels, "_faster", {(40, 48, torch.bfloat16, torch.get_num_threads()): False})
    seen = []
    real = int8_layer.dequantized_weight
    monkeypatch.setattr(int8_layer, "dequantized_weight", lambda dtype=None: seen.append(dtype) or real(dtype))
    x = torch.randn(6, 48)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = int8_layer(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(x, real(), int8_layer.bias), rtol=0.05, atol=0.05)
