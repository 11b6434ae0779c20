"""k-quant superblocks in the layout of llama.cpp: Q2_K, Q3_K, Q4_K, Q6_K (pure tensor functions).

memopt's implementation of these layouts (the searches are :mod:`kquant_fit`'s, modelled on
ggml-quants.c; codes may differ from llama.cpp's in rare ties, the stored layout and the decoding
are the same). Each row is cut into superblocks of 256 weights, each superblock into sub-blocks
with small integer scales under one fp16 super-scale:

====  =========  ==========  ========================  =================  ======  =====
type  sub-block  code bits   sub-block scale            minimum            bytes   bpw
====  =========  ==========  ========================  =================  ======  =====
Q2_K  16         2 (0..3)    4 bits x fp16 ``d``        4 bits x ``dmin``  84      2.625
Q3_K  16         3 (-4..3)   6 bits signed x ``d``      none               110     3.4375
Q4_K  32         4 (0..15)   6 bits x fp16 ``d``        6 bits x ``dmin``  144     4.5
Q6_K  16         6 (-32..31) 8 bits signed x ``d``      none               210     6.5625
====  =========  ==========  ========================  =================  ======  =====

``w' = d * sc * q - dmin * m`` per sub-block. A tensor whose rows are not a multiple of 256 falls
back the way llama.cpp's quantizer does (``llama_tensor_get_type``): Q2_K and Q3_K to IQ4_NL,
Q4_K to Q5_0, Q6_K to Q8_0, and to F16 when the row is not a multiple of 32 either
(:mod:`ggml_blocks`). ``meta['layout']`` says which layout a tensor really has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from memopt_core.primitives.formats.ggml_blocks import LEGACY_BLOCK, dequantize_legacy, legacy_levels, quantize_legacy
from memopt_core.primitives.formats.kquant_fit import (fit_scale_min, fit_signed_scale, quantize_signed_superscales,
                                                       quantize_superscales)
from memopt_core.primitives.formats.stored import StoredWeight, safe_divisor
from memopt_core.primitives.packing import pack_codes, unpack_codes

SUPERBLOCK = 256
FALLBACK = {"q2_k": "iq4_nl", "q3_k": "iq4_nl", "q4_k": "q5_0", "q6_k": "q8_0"}


@dataclass(frozen=True)
class KQuantType:
    sub: int  # weights per sub-block
    code_bits: int
    code_offset: int  # stored code = q + offset
    scale_bits: int
    scale_offset: int  # stored scale code = sc + offset
    has_min: bool

    @property
    def n_sub(self) -> int:
        return SUPERBLOCK // self.sub

    @property
    def type_size(self) -> int:
        """Bytes per superblock: codes, sub-block scales (and minimums), fp16 d (and dmin)."""
        per_sub = self.scale_bits * (2 if self.has_min else 1)
        return (SUPERBLOCK * self.code_bits + self.n_sub * per_sub) // 8 + (4 if self.has_min else 2)


KQUANTS = {"q2_k": KQuantType(16, 2, 0, 4, 0, True), "q3_k": KQuantType(16, 3, 4, 6, 32, False),
           "q4_k": KQuantType(32, 4, 0, 6, 0, True), "q6_k": KQuantType(16, 6, 32, 8, 128, False)}


def layout_for(kind: str, in_features: int) -> str:
    """The layout a ``kind`` tensor with rows of ``in_features`` really gets (llama.cpp's rule)."""
    if in_features % SUPERBLOCK == 0:
        return kind
    return FALLBACK[kind] if in_features % LEGACY_BLOCK == 0 else "f16"


def _asymmetric(sub: torch.Tensor, kind: str) -> tuple[dict, torch.Tensor]:
    """Q4_K / Q2_K: sub ``[n_sb, n_sub, sub]`` -> (scale tensors, codes)."""
    n_sb, n_sub, size = sub.shape
    flat = sub.reshape(-1, size)
    if kind == "q4_k":  # weights: the sub-block's RMS plus |x|
        weights = flat.pow(2).mean(-1, keepdim=True).sqrt() + flat.abs()
        scale, minimum = fit_scale_min(flat, weights, 15, -1.0, 0.1, 20, use_mad=False)
        levels, qmax = 63, 15
    else:
        scale, minimum = fit_scale_min(flat, flat.abs(), 3, -0.5, 0.1, 15, use_mad=True)
        levels, qmax = 15, 3
    d, sc = quantize_superscales(scale.reshape(n_sb, n_sub), levels)
    dmin, mc = quantize_superscales(minimum.reshape(n_sb, n_sub), levels)
    step = d.float()[:, None] * sc  # [n_sb, n_sub]
    shift = dmin.float()[:, None] * mc
    codes = ((sub + shift[..., None]) / safe_divisor(step)[..., None]).round().clamp(0, qmax)
    codes = torch.where(step[..., None] == 0, torch.zeros_like(codes), codes)
    return {"d": d, "dmin": dmin, "scales": sc, "mins": mc}, codes


def _symmetric(sub: torch.Tensor, kind: str) -> tuple[dict, torch.Tensor]:
    """Q3_K / Q6_K: sub ``[n_sb, n_sub, sub]`` -> (scale tensors, codes) with signed codes."""
    n_sb, n_sub, size = sub.shape
    flat = sub.reshape(-1, size)
    nmax, levels, low, high = (4, 32, -32, 31) if kind == "q3_k" else (32, 128, -128, 127)
    scale = fit_signed_scale(flat, flat * flat, nmax)
    d, sc = quantize_signed_superscales(scale.reshape(n_sb, n_sub), levels, low, high)
    step = d.float()[:, None] * sc
    codes = (sub / safe_divisor(step)[..., None]).round().clamp(-nmax, nmax - 1)
    codes = torch.where(step[..., None] == 0, torch.zeros_like(codes), codes)
    return {"d": d, "scales": sc}, codes


def _quantize_superblocks(w: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    spec = KQUANTS[kind]
    sub = w.detach().float().reshape(-1, spec.n_sub, spec.sub)  # [n_sb, n_sub, sub]: rows are whole superblocks
    fit = _asymmetric if spec.has_min else _symmetric
    parts, codes = fit(sub, kind)
    tensors = {"codes": pack_codes((codes + spec.code_offset).to(torch.uint8), spec.code_bits),
               "scales": pack_codes((parts["scales"] + spec.scale_offset).to(torch.uint8), spec.scale_bits),
               "d": parts["d"]}
    if spec.has_min:
        tensors.update(mins=pack_codes(parts["mins"].to(torch.uint8), spec.scale_bits), dmin=parts["dmin"])
    return tensors


def quantize_kquant(w: torch.Tensor, kind: str) -> StoredWeight:
    """``w [out, in]`` (not changed) -> stored ``kind`` (``q2_k``, ``q3_k``, ``q4_k``, ``q6_k``) or
    its fallback layout. Tensors: ``codes``, ``scales`` (and ``mins``) packed uint8, ``d`` (and
    ``dmin``) fp16 ``[n_superblocks]``."""
    if kind not in KQUANTS:
        raise ValueError(f"k-quant {kind!r} is not supported; choose {', '.join(KQUANTS)}")
    layout = layout_for(kind, w.shape[1])
    tensors = _quantize_superblocks(w, kind) if layout == kind else quantize_legacy(w, layout)
    return StoredWeight(kind, tuple(w.shape), tensors, {"layout": layout, "fallback": layout != kind})


def superblock_steps(stored: StoredWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per sub-block multiplier ``d * sc`` and offset ``dmin * m`` (or None), float32 ``[n_sb, n_sub]``."""
    spec, t = KQUANTS[stored.meta["layout"]], stored.tensors
    n_sb = t["d"].numel()
    sc = unpack_codes(t["scales"], spec.scale_bits, n_sb * spec.n_sub).float().sub_(spec.scale_offset)
    step = t["d"].float()[:, None] * sc.reshape(n_sb, spec.n_sub)
    if not spec.has_min:
        return step, None
    m = unpack_codes(t["mins"], spec.scale_bits, n_sb * spec.n_sub).float().reshape(n_sb, spec.n_sub)
    return step, t["dmin"].float()[:, None] * m


def dequantize_kquant(stored: StoredWeight) -> torch.Tensor:
    """Stored k-quant (or its fallback) -> float32 ``[out, in]``."""
    layout = stored.meta["layout"]
    if layout not in KQUANTS:
        return dequantize_legacy(stored.tensors, layout, stored.shape)
    spec = KQUANTS[layout]
    step, shift = superblock_steps(stored)
    codes = unpack_codes(stored.tensors["codes"], spec.code_bits, stored.numel).float().sub_(spec.code_offset)
    values = step[..., None] * codes.reshape(*step.shape, spec.sub)
    if shift is not None:
        values = values - shift[..., None]
    return values.reshape(stored.shape)


def kquant_levels(stored: StoredWeight, sub_index: int = 0) -> torch.Tensor:
    """The values sub-block ``sub_index`` (row-major over the superblocks) can take, ascending."""
    layout = stored.meta["layout"]
    if layout not in KQUANTS:
        return legacy_levels(stored.tensors, layout, sub_index)
    spec = KQUANTS[layout]
    step, shift = superblock_steps(stored)
    q = torch.arange(2 ** spec.code_bits, dtype=torch.float32) - spec.code_offset
    values = step.reshape(-1)[sub_index] * q - (0 if shift is None else shift.reshape(-1)[sub_index])
    return values.unique()
