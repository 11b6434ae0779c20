"""Bit packing of small unsigned integer codes into bytes (pure tensor functions).

Layout: one little-endian bit stream. Code ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of the
stream and bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``. For 1, 2, 4 and 8 bits
this is simply "``8 // bits`` codes per byte, the first code in the low bits" (two int4 codes
per byte: ``byte = c0 | c1 << 4``); 3, 5, 6 and 7 bits pack tightly (8 three-bit codes in
3 bytes). Every function returns a new tensor and leaves its arguments untouched.
"""
from __future__ import annotations

import torch

_FAST_BITS = (1, 2, 4, 8)
# Groups of 8 codes handled per step of the generic path: bounds the int64 scratch memory.
_STREAM_CHUNK = 1 << 20


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits occupy: ``ceil(numel * bits / 8)``."""
    return (numel * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits {bits!r} is not supported for packing; choose a whole number from 1 to 8")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (uint8, any shape, values ``< 2**bits``, read in row-major order)
    into a uint8 1-D tensor of exactly ``ceil(numel * bits / 8)`` bytes."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) >= 1 << bits:
        raise ValueError(f"code {int(flat.max())} does not fit in {bits} bits; codes must be below {1 << bits}")
    if bits in _FAST_BITS:
        return _pack_per_byte(flat, bits)
    return _pack_stream(flat, bits)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``packed`` uint8 1-D -> uint8 1-D of ``numel`` codes."""
    _check_bits(bits)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.numel() < need:
        raise ValueError(f"packed must be uint8 with at least {need} bytes for {numel} codes of {bits} bits, "
                         f"got {packed.numel()} bytes of {packed.dtype}")
    flat = packed.reshape(-1)[:need]
    if bits == 8:
        return flat.clone()
    if bits == 4:  # the hot path of QuantLinear.forward: two shifts, one interleave
        return torch.stack((flat & 0x0F, flat >> 4), dim=1).reshape(-1)[:numel]
    if bits in _FAST_BITS:
        return _unpack_per_byte(flat, bits, numel)
    return _unpack_stream(flat, bits, numel)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape) -> uint8 1-D bitmask, one bit per element (``ceil(numel/8)`` bytes)."""
    return _pack_per_byte(mask.reshape(-1).to(torch.uint8), 1)


def unpack_mask(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: uint8 1-D -> bool 1-D of ``numel`` elements."""
    return unpack_codes(packed, 1, numel).bool()


def _pad_to(flat: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -flat.numel() % multiple
    return torch.cat((flat, flat.new_zeros(pad))) if pad else flat


def _pack_per_byte(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [n] -> [ceil(n / k)] bytes, k = 8 // bits codes per byte."""
    per_byte = 8 // bits
    if per_byte == 1:
        return flat.clone()
    cols = _pad_to(flat, per_byte).reshape(-1, per_byte)  # [bytes, k]
    out = cols[:, 0].clone()
    for j in range(1, per_byte):
        out |= cols[:, j] << (bits * j)
    return out


def _unpack_per_byte(flat: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """[bytes] -> [numel] codes, k = 8 // bits codes per byte."""
    low = (1 << bits) - 1
    parts = [(flat >> (bits * j)) & low for j in range(8 // bits)]
    return torch.stack(parts, dim=1).reshape(-1)[:numel]


def _pack_stream(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Generic path: every 8 codes form one ``8 * bits``-bit integer, written as ``bits`` bytes."""
    groups = _pad_to(flat, 8).reshape(-1, 8)  # [n_groups, 8]
    code_shift = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    byte_shift = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    chunks = []
    for start in range(0, groups.shape[0], _STREAM_CHUNK):
        block = groups[start:start + _STREAM_CHUNK].to(torch.int64)
        # The codes occupy disjoint bit ranges, so a sum is a bitwise or.  [chunk]
        word = (block << code_shift).sum(dim=1)
        chunks.append(((word[:, None] >> byte_shift) & 0xFF).to(torch.uint8).reshape(-1))
    out = torch.cat(chunks) if chunks else flat.new_zeros(0)
    return out[:packed_nbytes(flat.numel(), bits)]


def _unpack_stream(flat: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Generic path: every ``bits`` bytes hold 8 codes, code j at bits ``j*bits ...`` (little-endian).

    Code j starts in byte ``j*bits // 8`` at bit ``j*bits % 8`` and reaches at most into the next
    byte (bits <= 8), so two uint8 shifts and an or build it: no widening to int64, which made this
    path 2-5x slower and ran on every forward of a 3-, 5-, 6- or 7-bit layer."""
    groups = _pad_to(flat, bits).reshape(-1, bits)  # [n_groups, bits]
    low = (1 << bits) - 1
    out = torch.empty(groups.shape[0], 8, dtype=torch.uint8, device=flat.device)  # [n_groups, 8 codes]
    for j in range(8):
        byte, offset = divmod(j * bits, 8)
        code = out[:, j]
        torch.bitwise_right_shift(groups[:, byte], offset, out=code)
        if offset + bits > 8:  # the high part sits in the next byte; uint8 drops what lies beyond bit 7
            code |= groups[:, byte + 1] << (8 - offset)
        code &= low
    return out.reshape(-1)[:numel]
