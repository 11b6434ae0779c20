"""GPTQ against round-to-nearest and against a plain, unoptimised reference written here.

The reference follows the GPTQ paper's OBS form directly: an explicit inverse Hessian, downdated
after every column (no Cholesky factor, no lazy blocks), with the symmetric grid's scales
computed by hand. Run in float64 both sides make the same rounding decisions, so codes match exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

from gptq_support import correlated_inputs, hessian, output_error, weight
from memopt_core.compression.layers import QuantLinear, copy_bias
from memopt_core.config import QuantConfig, SolverConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.gptq import decode_column, encode_column, gptq_quantize, one_thread
from memopt_core.primitives.quant import dequantize, quantize_weight


def reference_gptq(w, h, bits, group_size, act_order, damp=0.01):
    """Symmetric GPTQ, one column at a time with an explicitly downdated inverse Hessian.

    Returns (codes [out, in] in original column order, scales [out, n_groups] fp16)."""
    out_f, in_f = w.shape
    w, h = w.clone(), h.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(in_f)
    w, h = w[:, order], h[order][:, order]
    h += torch.eye(in_f, dtype=h.dtype) * damp * torch.diagonal(h).mean()
    hinv = torch.linalg.inv(h)
    n_groups = math.ceil(in_f / group_size)
    scales = torch.full((out_f, n_groups), float("nan"), dtype=torch.float16)
    codes = torch.zeros(out_f, in_f, dtype=torch.uint8)
    half = 2 ** (bits - 1)
    for p in range(in_f):
        column = int(order[p])
        g = column // group_size
        if torch.isnan(scales[0, g]):
            members = [q for q in range(in_f) if int(order[q]) // group_size == g]  # all still unvisited
            absmax = w[:, members].abs().amax(dim=1)
            scales[:, g] = (absmax.float() / (half - 1)).half()
        s = scales[:, g].float().double()
        s = torch.where(s == 0, torch.ones_like(s), s)
        code = (w[:, p] / s).round().add(half).clamp(0, 2 ** bits - 1)
        codes[:, column] = code.to(torch.uint8)
        error = w[:, p] - (code - half) * s
        # OBS: move the error onto the remaining columns, then drop column p from the inverse.
        w[:, p + 1:] -= (error / hinv[p, p])[:, None] * hinv[p, p + 1:][None, :]
        hinv = hinv - hinv[:, p:p + 1] @ hinv[p:p + 1, :] / hinv[p, p]
    return codes, scales


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 16), (2, 24)])
def test_matches_the_plain_reference(act_order, bits, group_size):
    x = correlated_inputs(512, 64)
    w, h = weight(24, 64), hessian(x)
    granularity = "group" if group_size < 64 else "per-channel"
    cfg = QuantConfig(method="gptq", bits=bits, granularity=granularity, group_size=group_size)
    qw = gptq_quantize(w, h, cfg, SolverConfig(act_order=act_order, block_size=16))
    codes, scales = reference_gptq(w, h, bits, group_size, act_order)
    assert torch.equal(qw.scale, scales)
    assert torch.equal(qw.codes, codes)


@pytest.mark.parametrize("cfg", [
    QuantConfig(method="gptq", bits=4),
    QuantConfig(method="gptq", bits=3, granularity="group", group_size=16),
    QuantConfig(method="gptq", bits=4, symmetric=False),
    QuantConfig(method="gptq", bits=2, symmetric=False, granularity="group", group_size=8),
    QuantConfig(method="gptq", bits=3, symmetric=False, zero_point="float", granularity="group", group_size=16),
    QuantConfig(method="gptq", bits=8, granularity="per-tensor"),
])
@pytest.mark.parametrize("act_order", [False, True])
def test_output_error_below_round_to_nearest(cfg, act_order):
    x = correlated_inputs(1024, 96, seed=3)
    w = weight(48, 96, seed=4)
    qw = gptq_quantize(w, hessian(x), cfg, SolverConfig(act_order=act_order))
    rtn = quantize_weight(w, cfg)
    assert output_error(x, w, dequantize(qw, torch.float64)) < 0.95 * output_error(x, w, dequantize(rtn, torch.float64))


@pytest.mark.parametrize("cfg", [QuantConfig(bits=3), QuantConfig(bits=4, symmetric=False),
                                 QuantConfig(bits=2, symmetric=False, zero_point="float"),
                                 QuantConfig(bits=8, granularity="per-tensor")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_coding_is_rtns(cfg, dtype):
    """The sweep's one-column encode/decode give RTN's codes and RTN's dequantized values."""
    w = weight(16, 1, seed=20).to(dtype) * torch.logspace(-2, 1, 16, dtype=dtype)[:, None]  # [16, 1]
    rtn = quantize_weight(w, cfg)
    scale = rtn.scale.reshape(-1).float()
    zero = None if rtn.zero is None else rtn.zero.reshape(-1).float()
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = encode_column(w[:, 0], safe, zero, cfg.bits, rtn.zero_kind)
    assert torch.equal(codes, rtn.codes[:, 0])
    assert torch.equal(decode_column(codes, scale, zero, cfg.bits, rtn.zero_kind), dequantize(rtn)[:, 0])


def test_result_does_not_depend_on_the_block_size():
    x = correlated_inputs(256, 40, seed=5)
    w, h = weight(8, 40, seed=6), hessian(x)
    cfg = QuantConfig(method="gptq", bits=3, granularity="group", group_size=16)  # ragged last group of 8
    results = [gptq_quantize(w, h, cfg, SolverConfig(block_size=b)) for b in (1, 7, 16, 128)]
    for other in results[1:]:
        assert torch.equal(other.codes, results[0].codes) and torch.equal(other.scale, results[0].scale)


def test_packed_format_is_rtns_with_ragged_last_group_in_original_column_order():
    x = correlated_inputs(256, 40, seed=7)
    w = weight(6, 40, seed=8).float()
    cfg = QuantConfig(method="gptq", bits=4, granularity="group", group_size=16, symmetric=False)
    qw = gptq_quantize(w, hessian(x).float(), cfg)
    rtn = quantize_weight(w, cfg)
    assert qw.codes.shape == rtn.codes.shape == (6, 40) and qw.codes.dtype == torch.uint8
    assert qw.scale.shape == rtn.scale.shape == (6, 3) and qw.scale.dtype == torch.float16
    assert qw.zero.shape == (6, 3) and qw.zero.dtype == torch.float16
    assert (qw.group_size, qw.zero_kind, qw.bits) == (rtn.group_size, rtn.zero_kind, rtn.bits)
    linear = torch.nn.Linear(40, 6, bias=True)
    layer = QuantLinear.from_quantized(qw, copy_bias(linear), linear.weight.dtype)
    assert torch.equal(layer.dequantized_weight(), dequantize(qw))
    assert torch.equal(layer.bias, linear.bias) and layer.bias is not linear.bias


def test_static_groups_take_rtn_scales_of_the_original_weight():
    x = correlated_inputs(256, 48, seed=9)
    w = weight(10, 48, seed=10)
    cfg = QuantConfig(method="gptq", bits=3, granularity="group", group_size=16)
    qw = gptq_quantize(w, hessian(x), cfg, SolverConfig(static_groups=True))
    assert torch.equal(qw.scale, quantize_weight(w, cfg).scale)


def test_pruned_weights_stay_zero_and_dead_inputs_are_dropped():
    x = correlated_inputs(256, 32, seed=11)
    x[:, 5] = 0  # an input that never fires
    w = weight(12, 32, seed=12)
    keep = torch.rand(12, 32, generator=torch.Generator().manual_seed(0)) > 0.5
    for cfg in (QuantConfig(method="gptq", bits=4), QuantConfig(method="gptq", bits=4, symmetric=False)):
        restored = dequantize(gptq_quantize(w, hessian(x), cfg, keep=keep), torch.float64)
        assert torch.all(restored[~keep] == 0)
        assert torch.all(restored[:, 5] == 0)


def test_arguments_are_not_changed_and_shapes_are_checked():
    x = correlated_inputs(128, 16, seed=13)
    w, h = weight(4, 16).float(), hessian(x).float()
    w0, h0 = w.clone(), h.clone()
    gptq_quantize(w, h, QuantConfig(method="gptq", bits=4))
    assert torch.equal(w, w0) and torch.equal(h, h0)
    with pytest.raises(ConfigError, match="Hessian"):
        gptq_quantize(w, h[:8, :8], QuantConfig(method="gptq", bits=4))
    with pytest.raises(ConfigError, match="dampening"):
        SolverConfig(damp=2.0)


def test_rank_deficient_hessian_still_factorises():
    x = correlated_inputs(8, 32, seed=14)  # 8 samples for 32 inputs: H is singular
    qw = gptq_quantize(weight(4, 32).float(), hessian(x).float(), QuantConfig(method="gptq", bits=4),
                       SolverConfig(damp=0.0))
    assert torch.isfinite(dequantize(qw)).all()


def test_one_thread_restores_the_count_after_nested_use():
    before = torch.get_num_threads()
    with one_thread():
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
