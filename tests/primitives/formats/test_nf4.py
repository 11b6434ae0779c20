"""NF4 against bitsandbytes' published table and its block rule, on hand-worked blocks."""
from __future__ import annotations

import pytest
import torch

from memopt_core.primitives.formats.nf4 import (BLOCK, block_absmax, dequantize_nf4, dynamic_map, nf4_levels,
                                                nf4_table, quantize_nf4)
from memopt_core.primitives.packing import unpack_codes

# bitsandbytes.functional.get_4bit_type("nf4"), as published in its source and the QLoRA paper.
BNB_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
           -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
           0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0]


def codes_of(stored):
    return unpack_codes(stored.tensors["codes"], 4, stored.numel).view(stored.shape)


def test_table_equals_bitsandbytes_published_values():
    assert nf4_table().tolist() == pytest.approx(BNB_NF4, abs=1e-7)


def test_hand_worked_block_of_64():
    # absmax 2.0; x / absmax = 0.25 -> 0.2461 (code 10), -0.6 -> -0.5251 (code 2), 0.04 -> 0.0796
    # (code 8: just above the 0 / 0.0796 midpoint 0.0398), 0.0 -> code 7, -2.0 -> -1 (code 0).
    block = torch.zeros(1, BLOCK)
    block[0, :5] = torch.tensor([0.5, -1.2, 0.08, 0.0, -2.0])
    stored = quantize_nf4(block)
    assert stored.tensors["absmax"].tolist() == [2.0]
    assert codes_of(stored)[0, :5].tolist() == [10, 2, 8, 7, 0]
    expected = [2.0 * BNB_NF4[c] for c in (10, 2, 8, 7, 0)]
    assert dequantize_nf4(stored)[0, :5].tolist() == pytest.approx(expected, rel=1e-6)


def test_blocks_run_over_the_flattened_tensor_with_fp32_absmax():
    w = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))  # 300 values: 5 blocks, the last of 44
    stored = quantize_nf4(w)
    flat = w.reshape(-1)
    expected = [flat[i:i + BLOCK].abs().max().item() for i in range(0, 300, BLOCK)]
    assert stored.tensors["absmax"].dtype == torch.float32 and stored.tensors["absmax"].tolist() == expected
    assert stored.nbytes == 150 + 5 * 4  # two codes per byte + one fp32 per block


def test_every_value_takes_the_nearest_level():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    stored = quantize_nf4(w)
    normalized = w.reshape(-1, BLOCK) / stored.tensors["absmax"][:, None]
    nearest = (normalized[..., None] - nf4_table()).abs().argmin(dim=-1)
    assert torch.equal(codes_of(stored).reshape(-1, BLOCK), nearest.to(torch.uint8))
    assert stored.bits_per_weight == 4.5


def test_dynamic_map_has_bitsandbytes_structure():
    code = dynamic_map()
    assert code.numel() == 256 and torch.all(code[1:] >= code[:-1])
    assert code.max().item() == 1.0 and (code == 0).sum().item() == 1
    positive = code[code > 0][:-1]  # without the appended 1.0
    for i in range(7):  # 2**i fraction values in each decade [0.1, 1) * 10**(i-6), per sign
        decade = (positive >= 0.1 * 10 ** (i - 6) - 1e-12) & (positive < 10 ** (i - 6))
        assert decade.sum().item() == 2 ** i
    assert (code < 0).sum().item() == 127


def test_double_quant_keeps_codes_and_bounds_the_absmax_error():
    w = torch.randn(512, 256, generator=torch.Generator().manual_seed(2))
    plain, double = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert torch.equal(plain.tensors["codes"], double.tensors["codes"])  # 4-bit codes use the exact absmax
    exact = plain.tensors["absmax"]
    centred = exact - exact.mean()
    gap = (dynamic_map()[1:] - dynamic_map()[:-1]).max().item() / 2  # worst rounding of a normalised value
    bound = torch.stack([c.abs().max() for c in centred.split(256)]).repeat_interleave(256)[:exact.numel()] * gap
    assert torch.all((block_absmax(double) - exact).abs() <= bound + 1e-7)
    n_blocks = exact.numel()  # 2048 blocks of 64: 8 groups of 256
    assert double.nbytes == w.numel() // 2 + n_blocks + 4 * 8 + 4
    assert double.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / w.numel())


def test_levels_of_a_block_are_the_table_times_its_absmax():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    stored = quantize_nf4(w)
    assert nf4_levels(stored, 2).tolist() == pytest.approx((nf4_table() * w[2].abs().max()).tolist())
