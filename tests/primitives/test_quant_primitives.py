"""Round-to-nearest quantization maths: hand-worked examples, grids, SQNR, clip search."""
from __future__ import annotations

import math

import pytest
import torch

from memopt_core.config import QuantConfig
from memopt_core.primitives.quant import dequantize, quantize_weight, sqnr_db

SYM = dict(symmetric=True)
ASYM_INT = dict(symmetric=False, zero_point="int")
ASYM_FLOAT = dict(symmetric=False, zero_point="float")


def gaussian(out=128, inp=256, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def test_hand_worked_int4_symmetric_per_channel():
    w = torch.tensor([[1.75, -0.5, 0.3, 0.0],
                      [-3.5, 1.0, 0.6, -0.1]])
    qw = quantize_weight(w, QuantConfig(bits=4))
    # Row absmax / 7 = 0.25 and 0.5 (both exact in fp16); q = round(w / scale); code = q + 8.
    assert qw.scale.dtype == torch.float16 and qw.scale.tolist() == [[0.25], [0.5]]
    assert qw.zero is None and qw.group_size == 4 and qw.zero_kind == "symmetric"
    assert qw.codes.tolist() == [[15, 6, 9, 8], [1, 10, 9, 8]]
    assert dequantize(qw).tolist() == [[1.75, -0.5, 0.25, 0.0], [-3.5, 1.0, 0.5, 0.0]]


def test_hand_worked_int4_asymmetric_integer_zero():
    w = torch.tensor([[-1.0, 0.0, 2.0, 0.5]])
    qw = quantize_weight(w, QuantConfig(bits=4, **ASYM_INT))
    scale = 0.199951171875  # fp16(3 / 15): rounded first, then used for the codes
    assert qw.scale.tolist() == [[scale]]
    assert qw.zero.tolist() == [[5.0]]  # round(1 / scale) = round(5.0012)
    assert qw.codes.tolist() == [[0, 5, 15, 8]]  # round(w / scale) + 5
    assert dequantize(qw)[0].tolist() == [(c - 5) * scale for c in (0, 5, 15, 8)]  # exact in fp32


def test_hand_worked_int4_float_minimum_with_ragged_groups():
    w = torch.tensor([[0.5, 2.0, 1.25, 0.5, 4.0, -4.0]])
    qw = quantize_weight(w, QuantConfig(bits=4, granularity="group", group_size=4, **ASYM_FLOAT))
    # Group 1: min 0.5, scale 1.5/15 = 0.1 -> fp16 0.0999755859375; group 2 (2 columns): min -4, scale 8/15.
    assert qw.scale.shape == (1, 2) and qw.zero.tolist() == [[0.5, -4.0]]
    assert qw.scale.tolist() == [[0.0999755859375, 0.533203125]]
    assert qw.codes.tolist() == [[0, 15, 8, 0, 15, 0]]


@pytest.mark.parametrize("kind", [SYM, ASYM_INT, ASYM_FLOAT])
@pytest.mark.parametrize("bits", [2, 3])
def test_each_group_holds_at_most_two_to_the_bits_values(kind, bits):
    w = gaussian(16, 96)
    qw = quantize_weight(w, QuantConfig(bits=bits, granularity="group", group_size=32, **kind))
    deq = dequantize(qw).view(16, 3, 32)
    for row in range(16):
        for group in range(3):
            assert deq[row, group].unique().numel() <= 2 ** bits
    assert qw.codes.max() <= 2 ** bits - 1


def test_sqnr_thresholds_and_monotone_in_bits():
    w = gaussian()
    sqnr = {b: sqnr_db(w, dequantize(quantize_weight(w, QuantConfig(bits=b)))) for b in (2, 3, 4, 5, 6, 8)}
    assert sqnr[8] > 40 and sqnr[4] > 15
    values = [sqnr[b] for b in sorted(sqnr)]
    assert values == sorted(values) and len(set(values)) == len(values)
    # Each extra bit is worth about 6 dB.
    assert 4.5 < (sqnr[6] - sqnr[4]) / 2 < 7.0


def test_groups_beat_per_channel():
    w = gaussian()
    per_channel = sqnr_db(w, dequantize(quantize_weight(w, QuantConfig(bits=4))))
    grouped = sqnr_db(w, dequantize(quantize_weight(w, QuantConfig(bits=4, granularity="group", group_size=32))))
    assert grouped > per_channel + 1.0


@pytest.mark.parametrize("kind", [SYM, ASYM_INT, ASYM_FLOAT])
def test_ragged_last_group_matches_quantizing_the_slices_alone(kind):
    w = gaussian(8, 576)
    qw = quantize_weight(w, QuantConfig(bits=4, granularity="group", group_size=128, **kind))
    assert qw.scale.shape == (8, 5) and qw.group_size == 128
    deq = dequantize(qw)
    for start in (0, 256, 512):  # full groups and the 64-column tail
        piece = w[:, start:start + 128]
        alone = quantize_weight(piece, QuantConfig(bits=4, **kind))  # per-channel over the slice
        group = start // 128
        assert torch.equal(qw.scale[:, group:group + 1], alone.scale)
        assert torch.equal(deq[:, start:start + 128], dequantize(alone))


def test_group_size_wider_than_the_layer_is_per_channel():
    w = gaussian(4, 48)
    wide = quantize_weight(w, QuantConfig(bits=4, granularity="group", group_size=128))
    assert wide.group_size == 48 and torch.equal(dequantize(wide), dequantize(quantize_weight(w, QuantConfig(bits=4))))


def test_per_tensor_has_one_scale():
    w = gaussian(8, 16)
    qw = quantize_weight(w, QuantConfig(bits=8, granularity="per-tensor"))
    assert qw.scale.shape == (1, 1)
    assert qw.scale.item() == torch.tensor(w.abs().max().item() / 127).half().item()
    q = (w / qw.scale.float()).round().clamp(-128, 127)
    assert torch.equal(dequantize(qw), q * qw.scale.float())


@pytest.mark.parametrize("kind", [SYM, ASYM_INT])
def test_zero_is_exact_and_integer_zero_points(kind):
    w = gaussian(16, 64) + 0.7  # shifted: asymmetric ranges
    w[:, ::3] = 0.0
    qw = quantize_weight(w, QuantConfig(bits=3, granularity="group", group_size=16, **kind))
    assert torch.all(dequantize(qw)[:, ::3] == 0.0)
    if qw.zero is not None:
        assert torch.equal(qw.zero, qw.zero.round()) and qw.zero.min() >= 0 and qw.zero.max() <= 7


def test_float_minimum_is_lossless_on_a_q4_1_grid():
    """A weight made like a GGUF Q4_1 block (w = code * d + m in fp32, fp16 d and m per 32 columns)
    re-quantizes exactly at 4 bits g32 with a float minimum (SmolLM2's bundled weights are such a grid)."""
    gen = torch.Generator().manual_seed(3)
    out_f, in_f = 48, 192
    d = (torch.rand(out_f, in_f // 32, 1, generator=gen) * 0.02 + 1e-3).half().float()
    m = (-d * (7 + torch.rand(out_f, in_f // 32, 1, generator=gen) * 2)).half().float()
    codes = torch.randint(0, 16, (out_f, in_f // 32, 32), generator=gen)
    codes[..., 0], codes[..., 1] = 0, 15  # each block spans its whole grid
    w = (codes.float() * d + m).reshape(out_f, in_f)
    qw = quantize_weight(w, QuantConfig(bits=4, granularity="group", group_size=32, **ASYM_FLOAT))
    assert torch.equal(qw.codes.view(out_f, -1, 32).long(), codes)
    assert torch.equal(dequantize(qw), w)
    assert sqnr_db(w, dequantize(qw)) == math.inf


@pytest.mark.parametrize("kind", [SYM, ASYM_INT, ASYM_FLOAT])
def test_clip_search_is_never_worse_than_minmax(kind):
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((64, 256))  # heavy tails: clipping pays
    results = {}
    for method in ("minmax", "clip-search"):
        cfg = QuantConfig(bits=3, granularity="group", group_size=64, range_method=method, **kind)
        err = (dequantize(quantize_weight(w, cfg)).double() - w.double()) ** 2
        results[method] = err.view(64, 4, 64).sum(-1)  # [out, groups]
    assert torch.all(results["clip-search"] <= results["minmax"] * (1 + 1e-6))
    assert results["clip-search"].sum() < 0.9 * results["minmax"].sum()


def test_all_zero_groups_stay_zero():
    w = gaussian(4, 64)
    w[1] = 0.0
    w[2, :32] = 0.0
    for kind in (SYM, ASYM_INT, ASYM_FLOAT):
        for method in ("minmax", "clip-search"):
            cfg = QuantConfig(bits=4, granularity="group", group_size=32, range_method=method, **kind)
            deq = dequantize(quantize_weight(w, cfg))
            assert torch.isfinite(deq).all()
            assert torch.all(deq[1] == 0) and torch.all(deq[2, :32] == 0)


def test_input_unchanged_and_low_precision_input():
    w = gaussian(8, 32).bfloat16()
    before = w.clone()
    qw = quantize_weight(w, QuantConfig(bits=8, **ASYM_INT))
    assert torch.equal(w, before)
    assert dequantize(qw, torch.bfloat16).dtype == torch.bfloat16
    assert sqnr_db(w, dequantize(qw)) > 40


def test_sqnr_db_reference_values():
    ref = torch.ones(4)
    assert sqnr_db(ref, torch.tensor([1.0, 1.0, 1.0, 0.0])) == pytest.approx(10 * math.log10(4))
    assert sqnr_db(ref, ref.clone()) == math.inf
    assert sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf


def test_non_matrix_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.zeros(4), QuantConfig())


def test_sqnr_summed_in_chunks_equals_the_whole_float64_formula():
    """More elements than one float64 chunk (65,536): the same figure as the whole-tensor formula."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(300, 500, generator=generator)  # 150,000 elements: three chunks
    approx = w + 0.01 * torch.randn(300, 500, generator=generator)
    ref = w.double()
    expected = 10 * math.log10(ref.pow(2).sum().item() / (ref - approx.double()).pow(2).sum().item())
    assert sqnr_db(w, approx) == pytest.approx(expected, rel=1e-12)
    assert sqnr_db(w, w.clone()) == math.inf and sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf
