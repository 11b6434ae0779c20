"""GGUF's 32-weight quantization blocks, written from memopt's codes (pure tensor functions).

Layouts (ggml ``block_q*``; every block covers 32 consecutive weights of one row, fp16 little-endian):

- ``Q8_0``: ``d`` (2 bytes), 32 signed int8 ``q``: ``w = d * q``                         34 bytes
- ``Q4_0``: ``d``, 16 bytes of nibbles, byte ``j = q[j] | q[j+16] << 4``: ``w = d * (q - 8)``   18 bytes
- ``Q4_1``: ``d``, ``m``, 16 bytes of nibbles as Q4_0: ``w = d * q + m``                 20 bytes
- ``Q5_0``: ``d``, ``qh`` (uint32, bit ``j`` = bit 4 of ``q[j]``), low nibbles as Q4_0: ``w = d * (q - 16)``  22 bytes
- ``Q5_1``: ``d``, ``m``, ``qh``, low nibbles: ``w = d * q + m``                          24 bytes

memopt's grids are the same equations: symmetric ``w = (code - 2**(b-1)) * scale`` and float-minimum
``w = code * scale + zero``, so codes are copied (shifted by a constant when a narrower grid is
held in a wider type) and fp16 scales are copied bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}
CENTRE = {"Q8_0": 0, "Q4_0": 8, "Q5_0": 16}  # symmetric types: w = d * (q - centre)


def block_params(param: torch.Tensor, out_features: int, in_features: int, group_size: int) -> torch.Tensor:
    """Per-group parameters ``[rows, n_groups]`` (rows 1 per-tensor) -> per-block ``[out, in // 32]``.

    Needs ``in_features % 32 == 0`` and a group size that is a multiple of 32 (or the whole row)."""
    n_blocks = in_features // BLOCK
    group_of_block = torch.arange(n_blocks) * BLOCK // group_size  # [n_blocks]
    if param.numel() == 1:  # per-tensor
        return param.reshape(1, 1).expand(out_features, n_blocks).contiguous()
    return param[:, group_of_block].expand(out_features, n_blocks).contiguous()


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """q uint8 ``[..., 32]`` (low 4 bits used) -> ``[..., 16]``: byte j = q[j] | q[j+16] << 4."""
    low = q & 0x0F
    return low[..., :16] | (low[..., 16:] << 4)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """q uint8 ``[..., 32]`` -> ``[..., 4]``: the little-endian uint32 whose bit j is bit 4 of q[j]."""
    bits = ((q >> 4) & 1).to(torch.int64)  # [..., 32]
    word = (bits << torch.arange(BLOCK, dtype=torch.int64)).sum(-1)  # [...]
    return ((word[..., None] >> torch.arange(0, 32, 8, dtype=torch.int64)) & 0xFF).to(torch.uint8)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """fp16 ``[...]`` -> its little-endian bytes ``[..., 2]`` uint8."""
    return torch.from_numpy(x.contiguous().numpy().astype("<f2").view(np.uint8).reshape(*x.shape, 2).copy())


def encode_blocks(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, gguf_type: str) -> np.ndarray:
    """Codes of the GGUF type ``q`` uint8 ``[out, in]`` (Q8_0: int8 values), per-block fp16 ``d``
    (and ``m`` for Q4_1/Q5_1) ``[out, in // 32]`` -> GGUF bytes uint8 ``[out, in // 32 * block bytes]``.

    ``q`` must already be on the type's grid (0..15 for Q4, 0..31 for Q5, -128..127 for Q8_0)."""
    out_f, in_f = q.shape
    blocks = q.reshape(out_f, in_f // BLOCK, BLOCK)
    parts = [_fp16_bytes(d.half())]
    if gguf_type in ("Q4_1", "Q5_1"):
        parts.append(_fp16_bytes(m.half()))
    if gguf_type == "Q8_0":
        parts.append(blocks.to(torch.int8).view(torch.uint8))
    else:
        if gguf_type.startswith("Q5"):
            parts.append(_high_bits(blocks))
        parts.append(_nibbles(blocks))
    return torch.cat(parts, dim=-1).reshape(out_f, -1).numpy()


def type_codes(codes: torch.Tensor, bits: int, zero_kind: str, gguf_type: str) -> torch.Tensor:
    """memopt's unsigned codes (``bits`` wide) -> the GGUF type's codes on the same grid.

    Symmetric: ``code - 2**(bits-1)`` is the signed value both share, so ``q = code - 2**(bits-1) + centre``
    (int8 for Q8_0). Float minimum / integer zero: the codes are the same numbers."""
    if zero_kind == "symmetric":
        signed = codes.to(torch.int16) - (1 << (bits - 1))
        shifted = signed + CENTRE[gguf_type]
        return shifted.to(torch.int8) if gguf_type == "Q8_0" else shifted.to(torch.uint8)
    return codes.clone()
