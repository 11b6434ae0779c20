"""Bit packing: exact byte layouts against a pure-Python bit-stream reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memopt_core.primitives import packing
from memopt_core.primitives.packing import pack_codes, pack_mask, packed_nbytes, unpack_codes, unpack_mask


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """Little-endian bit stream built with Python integers (independent of the tensor code)."""
    stream = 0
    for i, code in enumerate(codes):
        stream |= code << (i * bits)
    n_bytes = (len(codes) * bits + 7) // 8
    return [(stream >> (8 * k)) & 0xFF for k in range(n_bytes)]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 24, 1001])
def test_round_trip_and_layout_match_reference(bits, numel):
    gen = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2 ** bits, (numel,), dtype=torch.uint8, generator=gen)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(numel, bits) == -(-numel * bits // 8)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_hand_written_layouts():
    # Two int4 codes per byte, the first in the low nibble.
    assert pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [0x21, 0x03]
    # Four 2-bit codes per byte: 1 | 2<<2 | 3<<4 | 0<<6 = 57, then the leftover 3.
    assert pack_codes(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2).tolist() == [57, 3]
    # Eight 3-bit codes 0..7 fill exactly three bytes: bits 000 100 010 110 001 101 011 111 (LSB first).
    packed = pack_codes(torch.arange(8, dtype=torch.uint8), 3)
    assert packed.tolist() == [0b10001000, 0b11000110, 0b11111010]


def test_multi_dimensional_codes_are_read_row_major():
    codes = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [0x21, 0x43]
    assert unpack_codes(pack_codes(codes, 4), 4, 4).view(2, 2).tolist() == codes.tolist()


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_generic_stream_agrees_with_fast_paths(bits):
    codes = torch.randint(0, 2 ** bits, (77,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    stream = packing._pack_stream(codes, bits)
    assert torch.equal(stream, pack_codes(codes, bits))
    assert torch.equal(packing._unpack_stream(stream, bits, 77), codes)


def test_generic_stream_crosses_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(packing, "_STREAM_CHUNK", 3)  # 3 groups of 8 codes per step
    codes = torch.randint(0, 32, (101,), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    packed = pack_codes(codes, 5)
    assert packed.tolist() == reference_pack(codes.tolist(), 5)
    assert torch.equal(unpack_codes(packed, 5, 101), codes)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2 ** b - 1), max_size=70))))
def test_round_trip_property(case):
    bits, values = case
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.tolist() == reference_pack(values, bits)
    assert unpack_codes(packed, bits, len(values)).tolist() == values


def test_unpack_ignores_trailing_bytes():
    codes = torch.tensor([5, 6, 7], dtype=torch.uint8)
    packed = torch.cat((pack_codes(codes, 3), torch.tensor([255], dtype=torch.uint8)))
    assert unpack_codes(packed, 3, 3).tolist() == [5, 6, 7]


def test_mask_round_trip():
    mask = torch.tensor([[True, False, False, True, True], [False, False, False, False, True]])
    packed = pack_mask(mask)
    assert packed.numel() == 2
    assert packed.tolist() == reference_pack([int(v) for v in mask.reshape(-1).tolist()], 1)
    assert torch.equal(unpack_mask(packed, 10), mask.reshape(-1))
    assert unpack_mask(packed, 10).dtype == torch.bool


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_bad_bits_are_rejected(bits):
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), bits)


def test_bad_codes_and_short_buffers_are_rejected():
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_codes(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        pack_codes(torch.tensor([1], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="at least 2 bytes"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 4, 3)
