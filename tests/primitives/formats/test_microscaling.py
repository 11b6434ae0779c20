"""MXFP4 and NVFP4 on hand-worked blocks, against gguf.quants and torch's float8 types."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from memopt_core.primitives.formats.microscaling import (dequantize_microscaling, microscaling_levels, mx_exponent,
                                                         mx_scales, quantize_mxfp4, quantize_nvfp4)
from memopt_core.primitives.formats.minifloat import decode_e2m1, round_to_e2m1
from memopt_core.primitives.packing import unpack_codes


def codes_of(stored):
    return unpack_codes(stored.tensors["codes"], 4, stored.numel)


def test_e2m1_rounds_to_nearest_with_ties_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 0.3, -0.3, -0.1, -2.6, 100.0])
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 0.5, -0.5, 0.0, -3.0, 6.0]
    codes = round_to_e2m1(x)
    assert decode_e2m1(codes).tolist() == expected
    assert codes[10].item() == 0  # a negative value rounding to zero is +0, not -0


@pytest.mark.parametrize("absmax, exponent, top_value", [(1.0, -2, 1.0), (6.5, 0, 6.0), (0.75, -3, 0.75),
                                                        (7.99, 0, 6.0), (0.001, -12, 0.001)])
def test_mxfp4_scale_exponent_is_floor_log2_absmax_minus_2(absmax, exponent, top_value):
    block = torch.zeros(1, 32)
    block[0, 5] = absmax
    block[0, 6] = absmax / 3
    stored = quantize_mxfp4(block)
    assert stored.tensors["scale"].tolist() == [exponent + 127]
    decoded = dequantize_microscaling(stored)[0]
    assert decoded[5].item() == pytest.approx(top_value, rel=0.13)  # E2M1 steps: at most 1/8 relative
    scaled = absmax / 3 / 2.0 ** exponent
    assert decoded[6].item() == decode_e2m1(round_to_e2m1(torch.tensor([scaled]))).item() * 2.0 ** exponent


def test_mxfp4_scale_bytes_are_e8m0_as_torch_reads_them():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 0.03
    stored = quantize_mxfp4(w)
    assert torch.equal(stored.tensors["scale"].view(torch.float8_e8m0fnu).float(), mx_scales(stored))
    assert torch.equal(mx_exponent(torch.tensor([0.0])), torch.tensor([-127], dtype=torch.int32))


def test_mxfp4_equals_gguf_quants_on_random_blocks():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    stored = quantize_mxfp4(w)
    reference = quants.quantize(w.numpy(), GGMLQuantizationType.MXFP4).reshape(-1, 17)  # [blocks, e8m0 + 16]
    assert np.array_equal(reference[:, 0], stored.tensors["scale"].numpy())
    ref_codes = np.concatenate([reference[:, 1:] & 0xF, reference[:, 1:] >> 4], axis=1)  # low nibbles: 0..15
    assert np.array_equal(ref_codes.reshape(-1), codes_of(stored).numpy())
    decoded = quants.dequantize(reference.reshape(64, -1), GGMLQuantizationType.MXFP4)
    assert np.array_equal(decoded, dequantize_microscaling(stored).numpy())
    assert stored.bits_per_weight == 4.25


def test_nvfp4_scales_are_torch_e4m3_casts_and_gguf_decodes_the_layout():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(2))
    w[3, 7] = 6 * 448.0  # amax / (6 * 448) = 1: the global scale is 1, as gguf's NVFP4 blocks assume
    stored = quantize_nvfp4(w)
    assert stored.tensors["global_scale"].tolist() == [1.0]
    absmax = w.reshape(-1, 16).abs().amax(dim=1)
    assert torch.equal(stored.tensors["scale"].view(torch.uint8), (absmax / 6).to(torch.float8_e4m3fn).view(torch.uint8))
    # gguf block_nvfp4: 4 E4M3 scale bytes, then for each sub-block of 16 eight bytes (low nibble j, high j+8).
    codes = codes_of(stored).reshape(-1, 4, 2, 8).numpy()
    packed = (codes[:, :, 0] | (codes[:, :, 1] << 4)).reshape(-1, 32)
    scales = stored.tensors["scale"].view(torch.uint8).numpy().reshape(-1, 4)
    blocks = np.concatenate([scales, packed], axis=1).reshape(16, -1)
    decoded = quants.dequantize(blocks, GGMLQuantizationType.NVFP4)
    assert np.array_equal(decoded, dequantize_microscaling(stored).numpy())


def test_nvfp4_global_scale_and_bits_per_weight():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3)) * 0.02
    stored = quantize_nvfp4(w)
    assert stored.tensors["global_scale"].item() == pytest.approx(w.abs().max().item() / (6 * 448))
    assert stored.bits_per_weight == 4.5 + 32 / w.numel()
    levels = microscaling_levels(stored, 0)
    step = stored.tensors["scale"][0].float() * stored.tensors["global_scale"][0]
    assert levels.numel() == 15 and levels.max().item() == 6 * step.item() and levels.min().item() == -6 * step.item()
    # the block's largest value is within half an E2M1 step (1/6 of the top level) of its true absmax
    assert levels.max().item() == pytest.approx(w.reshape(-1, 16)[0].abs().max().item(), rel=1 / 6)
