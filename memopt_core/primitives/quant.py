"""Round-to-nearest weight quantization maths (pure tensor functions).

A weight ``[out, in]`` is cut into groups of ``group_size`` consecutive input columns (one group
per row for per-channel, one group for the whole tensor for per-tensor; a size that does not
divide ``in`` leaves a shorter last group). Each group gets an fp16 scale and, when asymmetric,
an fp16 zero. Codes are unsigned, ``0 .. 2**bits - 1``:

- ``symmetric``: ``w' = (code - 2**(bits-1)) * scale``; zero is exactly representable.
- ``int`` (GPTQ): ``w' = (code - zero) * scale`` with an integer ``zero``; zero is exact.
- ``float`` (GGUF Q4_1): ``w' = code * scale + zero`` where ``zero`` is the group minimum.

Scales and minimums are rounded to fp16 *before* the codes are computed, so the stored tensors
reproduce the dequantized weight bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.ranges import entropy_ratio, percentile_ratio, pooled_magnitudes

_SQNR_CHUNK = 1 << 16  # elements summed at a time in float64 (512 KiB)

ZERO_KINDS = ("symmetric", "int", "float")
CLIP_RATIOS = tuple(torch.linspace(1.0, 0.5, 20).tolist())


@dataclass
class QuantizedWeight:
    """Codes and their parameters. ``codes`` uint8 ``[out, in]``; ``scale`` fp16 ``[rows, n_groups]``
    with ``rows = out`` (``rows = n_groups = 1`` per-tensor); ``zero`` like ``scale`` or None."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group_size: int
    zero_kind: str
    shape: tuple[int, int]

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]


def zero_kind_of(cfg: QuantConfig) -> str:
    """'symmetric', 'int' or 'float' for a config."""
    return "symmetric" if cfg.symmetric else cfg.zero_point


def _grouped(w: torch.Tensor, group_size: int, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [out, in]`` float32 -> (groups ``[rows, n_groups, g]``, valid ``[n_groups, g]`` bool).

    The ragged tail is padded by repeating the last column (min and max are unchanged);
    ``valid`` marks the real columns so errors ignore the padding."""
    out_f, in_f = w.shape
    if per_tensor:
        return w.reshape(1, 1, -1), torch.ones(1, out_f * in_f, dtype=torch.bool, device=w.device)
    n_groups = math.ceil(in_f / group_size)
    pad = n_groups * group_size - in_f
    if pad:
        w = torch.cat((w, w[:, -1:].expand(out_f, pad)), dim=1)
    valid = (torch.arange(n_groups * group_size, device=w.device) < in_f).reshape(n_groups, group_size)
    return w.reshape(out_f, n_groups, group_size), valid


def _fit(lo: torch.Tensor, hi: torch.Tensor, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Group range ``[lo, hi]`` (float32 ``[rows, n_groups]``) -> fp16 (scale, zero or None)."""
    if kind == "symmetric":
        absmax = torch.maximum(lo.abs(), hi.abs())
        return (absmax / (2 ** (bits - 1) - 1)).half(), None
    levels = 2 ** bits - 1
    if kind == "float":
        return ((hi - lo) / levels).half(), lo.half()
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the integer grid must contain zero
    scale = ((hi - lo) / levels).half()
    zero = (-lo / _safe(scale.float())).round().clamp(0, levels)
    return scale, zero.half()


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """All-zero (or constant) groups have scale 0: divide by 1 instead; their codes decode to 0 / the minimum."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _encode(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, kind: str) -> torch.Tensor:
    """groups ``[rows, n_groups, g]`` float32 -> codes, same shape, uint8."""
    s = _safe(scale.float())[..., None]
    if kind == "symmetric":
        q = (groups / s).round() + 2 ** (bits - 1)
    elif kind == "int":
        q = (groups / s).round() + zero.float()[..., None]
    else:
        q = ((groups - zero.float()[..., None]) / s).round()
    return q.clamp(0, 2 ** bits - 1).to(torch.uint8)


def _decode(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, kind: str) -> torch.Tensor:
    """codes ``[rows, n_groups, g]`` (or any shape broadcasting with ``scale[..., None]``) -> float32.

    The operation order is fixed (``code * scale + min`` for float) so the result is reproducible."""
    c = codes.float()  # a fresh tensor: the in-place steps below save allocations, not source data
    s = scale.float()[..., None]
    if kind == "symmetric":
        return c.sub_(2 ** (bits - 1)).mul_(s)
    if kind == "int":
        return c.sub_(zero.float()[..., None]).mul_(s)
    return c.mul_(s).add_(zero.float()[..., None])


def quantize_weight(w: torch.Tensor, cfg: QuantConfig) -> QuantizedWeight:
    """Quantize ``w [out, in]`` (any float dtype; not changed) with ``cfg`` (bits, granularity,
    group size, symmetric / zero point, range method). Returns new tensors."""
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(w.shape)}")
    out_f, in_f = w.shape
    kind, bits = zero_kind_of(cfg), cfg.bits
    per_tensor = cfg.granularity == "per-tensor"
    group_size = min(cfg.group_size, in_f) if cfg.granularity == "group" else in_f
    groups, valid = _grouped(w.detach().float(), group_size, per_tensor)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # [rows, n_groups]
    if cfg.range_method == "clip-search":
        scale, zero = _clip_search(groups, valid, lo, hi, bits, kind)
    else:
        ratio = histogram_clip_ratio(groups, valid, cfg)
        scale, zero = _fit(lo * ratio, hi * ratio, bits, kind)
    codes = _encode(groups, scale, zero, bits, kind).reshape(out_f, -1)[:, :in_f].contiguous()
    return QuantizedWeight(codes, scale, zero, bits, group_size, kind, (out_f, in_f))


def histogram_clip_ratio(groups: torch.Tensor, valid: torch.Tensor, cfg: QuantConfig) -> float:
    """The fraction of each group's range kept by ``cfg.range_method``: 1.0 for min-max, else the
    ratio chosen from the layer's pooled histogram (:mod:`memopt_core.primitives.formats.ranges`)."""
    if cfg.range_method not in ("percentile", "entropy"):
        return 1.0
    magnitudes = pooled_magnitudes(groups, valid)
    return percentile_ratio(magnitudes) if cfg.range_method == "percentile" else entropy_ratio(magnitudes, cfg.bits)


def weight_clip_ratio(w: torch.Tensor, cfg: QuantConfig) -> float:
    """:func:`histogram_clip_ratio` of a weight ``[out, in]`` (not changed) under ``cfg``'s groups."""
    group_size = min(cfg.group_size, w.shape[1]) if cfg.granularity == "group" else w.shape[1]
    groups, valid = _grouped(w.detach().float(), group_size, cfg.granularity == "per-tensor")
    return histogram_clip_ratio(groups, valid, cfg)


def _clip_search(groups: torch.Tensor, valid: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per group, shrink ``[lo, hi]`` by each ratio of :data:`CLIP_RATIOS` and keep the one with the
    lowest squared reconstruction error. Ratio 1.0 (min-max) comes first and is only replaced by a
    strictly better candidate, so the result is never worse than min-max."""
    best_err = best_scale = best_zero = None
    for ratio in CLIP_RATIOS:
        scale, zero = _fit(lo * ratio, hi * ratio, bits, kind)
        approx = _decode(_encode(groups, scale, zero, bits, kind), scale, zero, bits, kind)
        err = ((approx - groups) ** 2 * valid).sum(dim=-1)  # [rows, n_groups]
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                     group_size: int, zero_kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """codes uint8 ``[out, in]`` + fp16 ``scale``/``zero [rows, n_groups]`` -> weight ``[out, in]`` in ``dtype``.

    Shared by :func:`dequantize` and ``QuantLinear.forward``; computes in float32."""
    out_f, in_f = codes.shape
    if scale.numel() == 1:  # per-tensor
        return _decode(codes, scale.reshape(1), None if zero is None else zero.reshape(1), bits, zero_kind).to(dtype)
    # Whole groups are a free view [out, n_full, g] broadcast against [rows, n_full, 1]; the ragged
    # tail is decoded apart (indexing the parameters per column is far slower on CPU).
    n_full = in_f // group_size
    full = n_full * group_size
    parts = []
    if n_full:
        head = codes if full == in_f else codes[:, :full]
        parts.append(_decode(head.reshape(out_f, n_full, group_size), scale[:, :n_full],
                             None if zero is None else zero[:, :n_full], bits, zero_kind).reshape(out_f, full))
    if full < in_f:
        tail = codes[:, full:].unsqueeze(1)  # [out, 1, in - full]
        parts.append(_decode(tail, scale[:, -1:], None if zero is None else zero[:, -1:], bits,
                             zero_kind).reshape(out_f, in_f - full))
    w = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return w.to(dtype)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """QuantizedWeight -> dense weight ``[out, in]`` in ``dtype`` (a new tensor)."""
    return dequantize_codes(qw.codes, qw.scale, qw.zero, qw.bits, qw.group_size, qw.zero_kind, dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref^2) / sum((ref - approx)^2))``.

    ``inf`` when ``approx`` equals ``reference`` exactly. Summed in float64 over ``_SQNR_CHUNK``
    elements at a time: float64 copies of a whole layer would take 8x its float32 size at once,
    the largest temporaries of compressing a model layer by layer."""
    ref_parts = reference.detach().reshape(-1).split(_SQNR_CHUNK)
    approx_parts = approx.detach().reshape(-1).split(_SQNR_CHUNK)
    signal = noise = 0.0
    for ref, other in zip(ref_parts, approx_parts, strict=True):
        ref = ref.double()
        noise += (ref - other.double()).pow_(2).sum().item()
        signal += ref.pow_(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
