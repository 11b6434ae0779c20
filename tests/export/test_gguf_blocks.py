"""GGUF blocks written from memopt's codes: hand-worked byte layouts, and gguf's own dequantizer
giving back exactly the weights memopt computes with."""
import gguf
import numpy as np
import pytest
import torch

from memopt_core.config import QuantConfig
from memopt_core.export.formats import GGUF_TYPES
from memopt_core.export.gguf_blocks import BLOCK_BYTES, block_params, encode_blocks, type_codes
from memopt_core.primitives.quant import dequantize, quantize_weight


def _fp16(value: float) -> list[int]:
    return list(np.array([value], dtype="<f2").view(np.uint8))


def test_q4_0_block_is_d_then_nibbles_j_and_j_plus_16():
    q = torch.tensor([[j % 16 for j in range(32)]], dtype=torch.uint8)  # q[j] = q[j + 16] = j for j < 16
    d = torch.tensor([[0.5]], dtype=torch.float16)
    block = encode_blocks(q, d, None, "Q4_0")
    assert list(block[0]) == [0x00, 0x38] + [j | j << 4 for j in range(16)]  # fp16 0.5 = 0x3800


def test_q4_0_nibble_order_with_distinct_halves():
    q = torch.tensor([[1] * 16 + [2] * 16], dtype=torch.uint8)
    block = encode_blocks(q, torch.tensor([[1.0]], dtype=torch.float16), None, "Q4_0")
    assert list(block[0][2:]) == [0x21] * 16  # low nibble q[j] = 1, high nibble q[j + 16] = 2


def test_q5_0_high_bits_word_and_low_nibbles():
    q = torch.arange(32, dtype=torch.uint8)[None]  # bit 4 set exactly for j >= 16
    block = encode_blocks(q, torch.tensor([[2.0]], dtype=torch.float16), None, "Q5_0")
    assert list(block[0][:2]) == _fp16(2.0)
    assert list(block[0][2:6]) == [0x00, 0x00, 0xFF, 0xFF]  # uint32 0xFFFF0000, little-endian
    assert list(block[0][6:]) == [j | j << 4 for j in range(16)]


def test_q4_1_and_q5_1_put_the_minimum_after_the_scale():
    q = torch.zeros(1, 32, dtype=torch.uint8)
    d, m = torch.tensor([[0.25]], dtype=torch.float16), torch.tensor([[-1.5]], dtype=torch.float16)
    assert list(encode_blocks(q, d, m, "Q4_1")[0][:4]) == _fp16(0.25) + _fp16(-1.5)
    assert list(encode_blocks(q, d, m, "Q5_1")[0][:8]) == _fp16(0.25) + _fp16(-1.5) + [0, 0, 0, 0]


def test_q8_0_codes_are_signed_bytes():
    codes = torch.tensor([[0, 127, 128, 255] * 8], dtype=torch.uint8)  # memopt's unsigned 8-bit codes
    q = type_codes(codes, 8, "symmetric", "Q8_0")
    block = encode_blocks(q, torch.tensor([[1.0]], dtype=torch.float16), None, "Q8_0")
    assert list(block[0][2:6].view(np.int8)) == [-128, -1, 0, 127]


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"])
@pytest.mark.parametrize("group_size", [32, 64])
def test_gguf_dequantizes_to_memopts_weights_exactly(type_name, group_size):
    torch.manual_seed(0)
    w = torch.randn(6, 128)
    ftype = GGUF_TYPES[type_name]
    qw = quantize_weight(w, ftype.quant_config(group_size))
    data = _blocks(qw, type_name)
    assert data.shape[1] == 128 // 32 * BLOCK_BYTES[type_name]
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type_name])
    assert np.array_equal(theirs, dequantize(qw).numpy())


@pytest.mark.parametrize("bits, kind, type_name", [(3, "symmetric", "Q4_0"), (2, "symmetric", "Q4_0"),
                                                   (4, "symmetric", "Q5_0"), (6, "symmetric", "Q8_0"),
                                                   (3, "float", "Q4_1"), (4, "float", "Q5_1")])
def test_narrower_grids_widen_exactly(bits, kind, type_name):
    torch.manual_seed(1)
    w = torch.randn(4, 64)
    config = QuantConfig(bits=bits, granularity="group", group_size=32, symmetric=kind == "symmetric",
                         zero_point="float" if kind == "float" else "int")
    qw = quantize_weight(w, config)
    theirs = gguf.quants.dequantize(_blocks(qw, type_name), gguf.GGMLQuantizationType[type_name])
    assert np.array_equal(theirs, dequantize(qw).numpy())


def test_per_channel_and_per_tensor_scales_repeat_over_blocks():
    scale = torch.tensor([[2.0], [3.0]], dtype=torch.float16)
    assert block_params(scale, 2, 96, 96).tolist() == [[2.0] * 3, [3.0] * 3]
    assert block_params(torch.tensor([[5.0]], dtype=torch.float16), 2, 64, 64).tolist() == [[5.0] * 2] * 2


def _blocks(qw, type_name):
    out_f, in_f = qw.shape
    q = type_codes(qw.codes, qw.bits, qw.zero_kind, type_name)
    d = block_params(qw.scale, out_f, in_f, qw.group_size)
    m = None if qw.zero is None else block_params(qw.zero, out_f, in_f, qw.group_size)
    return encode_blocks(q, d, m, type_name)
