"""memopt's stored k-quant tensors written byte for byte in llama.cpp's block layout (numpy).

``ggml_bytes(stored)`` returns ``[out, row_bytes]`` uint8 that ``gguf.quants.dequantize`` (or a
GGUF writer) reads as the layout's type: ``block_q4_K`` = fp16 d, fp16 dmin, 12 bytes of 6-bit
scales and minimums, 128 bytes of 4-bit codes (two sub-blocks share a byte: low nibble, high
nibble). The byte orders follow ggml-common.h's block structs, as gguf's numpy decoders read them.
"""
from __future__ import annotations

import numpy as np
import torch

from memopt_core.primitives.formats.kquants import KQUANTS, SUPERBLOCK
from memopt_core.primitives.formats.stored import StoredWeight
from memopt_core.primitives.packing import unpack_codes

GGML_TYPE_NAMES = {"q2_k": "Q2_K", "q3_k": "Q3_K", "q4_k": "Q4_K", "q6_k": "Q6_K", "q5_0": "Q5_0",
                   "q8_0": "Q8_0", "iq4_nl": "IQ4_NL", "f16": "F16"}


def _fp16_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().half().numpy().view(np.uint8).reshape(-1, 2)


def _unpacked(stored: StoredWeight, name: str, bits: int, count: int) -> np.ndarray:
    return unpack_codes(stored.tensors[name], bits, count).cpu().numpy().astype(np.uint8)


def _nibbles(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low | (high << 4)).astype(np.uint8)


def _q4_k(stored: StoredWeight, n_sb: int) -> list[np.ndarray]:
    sc = _unpacked(stored, "scales", 6, n_sb * 8).reshape(n_sb, 8)
    mn = _unpacked(stored, "mins", 6, n_sb * 8).reshape(n_sb, 8)
    scales = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                             _nibbles(sc[:, 4:] & 0xF, mn[:, 4:] & 0xF)], axis=1)
    q = _unpacked(stored, "codes", 4, n_sb * SUPERBLOCK).reshape(n_sb, 4, 2, 32)  # [sb, pair, sub, 32]
    return [_fp16_bytes(stored.tensors["d"]), _fp16_bytes(stored.tensors["dmin"]), scales,
            _nibbles(q[:, :, 0], q[:, :, 1]).reshape(n_sb, 128)]


def _crumbs(q: np.ndarray, n_sb: int) -> np.ndarray:
    """2-bit fields ``[n_sb, 256]`` -> ``[n_sb, 64]``: byte ``32h + l`` holds element ``128h + 32s + l``
    in bits ``2s``."""
    q = q.reshape(n_sb, 2, 4, 32)
    return sum(q[:, :, s] << (2 * s) for s in range(4)).astype(np.uint8).reshape(n_sb, 64)


def _q2_k(stored: StoredWeight, n_sb: int) -> list[np.ndarray]:
    sc = _unpacked(stored, "scales", 4, n_sb * 16).reshape(n_sb, 16)
    mn = _unpacked(stored, "mins", 4, n_sb * 16).reshape(n_sb, 16)
    q = _unpacked(stored, "codes", 2, n_sb * SUPERBLOCK)
    return [_nibbles(sc, mn), _crumbs(q, n_sb), _fp16_bytes(stored.tensors["d"]), _fp16_bytes(stored.tensors["dmin"])]


def _q3_k(stored: StoredWeight, n_sb: int) -> list[np.ndarray]:
    u = _unpacked(stored, "codes", 3, n_sb * SUPERBLOCK).reshape(n_sb, SUPERBLOCK)  # q + 4: high bit set <=> q >= 0
    hmask = sum(((u[:, 32 * b:32 * (b + 1)] >> 2) & 1) << b for b in range(8)).astype(np.uint8)  # [n_sb, 32]
    sc = _unpacked(stored, "scales", 6, n_sb * 16).reshape(n_sb, 16)
    low = _nibbles(sc[:, :8] & 0xF, sc[:, 8:] & 0xF)
    high = sum(((sc[:, 4 * s:4 * (s + 1)] >> 4) & 3) << (2 * s) for s in range(4)).astype(np.uint8)
    return [hmask, _crumbs(u & 3, n_sb), low, high, _fp16_bytes(stored.tensors["d"])]


def _q6_k(stored: StoredWeight, n_sb: int) -> list[np.ndarray]:
    u = _unpacked(stored, "codes", 6, n_sb * SUPERBLOCK).reshape(n_sb, 2, 2, 64)  # [sb, half, nibble, 64]
    ql = _nibbles(u[:, :, 0] & 0xF, u[:, :, 1] & 0xF).reshape(n_sb, 128)
    qh = _crumbs(u.reshape(n_sb, SUPERBLOCK) >> 4, n_sb)
    scales = (_unpacked(stored, "scales", 8, n_sb * 16).astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    return [ql, qh, scales.reshape(n_sb, 16), _fp16_bytes(stored.tensors["d"])]


def _legacy(stored: StoredWeight, layout: str) -> list[np.ndarray]:
    t, n = stored.tensors, stored.numel
    if layout == "f16":
        return [t["weight"].detach().cpu().numpy().view(np.uint8).reshape(-1, 2)]
    if layout == "q8_0":
        return [_fp16_bytes(t["d"]), t["codes"].cpu().numpy().view(np.uint8).reshape(-1, 32)]
    q = _unpacked(stored, "codes", 5 if layout == "q5_0" else 4, n).reshape(-1, 2, 16)
    parts = [_fp16_bytes(t["d"])]
    if layout == "q5_0":  # bit j of the little-endian uint32 qh is the 5th bit of element j
        high = (q.reshape(-1, 32) >> 4).astype(np.uint32)
        qh = sum(high[:, j] << j for j in range(32)).astype("<u4")
        parts.append(qh.view(np.uint8).reshape(-1, 4))
    parts.append(_nibbles(q[:, 0] & 0xF, q[:, 1] & 0xF))
    return parts


def ggml_bytes(stored: StoredWeight) -> tuple[str, np.ndarray]:
    """(ggml type name, bytes ``[out, row_bytes]`` uint8) of a stored k-quant in llama.cpp's layout."""
    layout = stored.meta["layout"]
    if layout in KQUANTS:
        n_sb = stored.numel // SUPERBLOCK
        parts = {"q2_k": _q2_k, "q3_k": _q3_k, "q4_k": _q4_k, "q6_k": _q6_k}[layout](stored, n_sb)
    else:
        parts = _legacy(stored, layout)
    blocks = np.concatenate(parts, axis=1)  # [n_blocks, type_size]
    return GGML_TYPE_NAMES[layout], blocks.reshape(stored.shape[0], -1)
