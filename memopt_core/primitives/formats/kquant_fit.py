"""Per-sub-block scale searches in the manner of llama.cpp's k-quants (pure tensor functions).

memopt's vectorised implementation of the searches ``quantize_row_q*_K_ref`` use (ggml-quants.c):

- :func:`fit_scale_min` (``make_qkx2_quants``): an asymmetric grid ``x ~ scale * q - m`` with
  ``q`` in ``0..nmax`` and ``m >= 0``; tries ``nstep + 1`` inverse scales around ``nmax / range``
  and keeps the weighted least-squares (scale, min) of the best codes;
- :func:`fit_signed_scale` (``make_qx_quants``): a symmetric grid ``x ~ scale * q`` with ``q`` in
  ``-nmax..nmax-1``; tries 19 inverse scales around ``-nmax / max`` and keeps the one that
  maximises ``(sum w x q)^2 / sum w q^2`` (the least error at the best scale).

Rounding is round-half-to-even, as llama.cpp's ``nearest_int``. Inputs are ``[N, n]`` groups.
"""
from __future__ import annotations

import torch

GROUP_MAX_EPS = 1e-15


def _weighted_error(diff: torch.Tensor, w: torch.Tensor, use_mad: bool) -> torch.Tensor:
    return (w * (diff.abs() if use_mad else diff * diff)).sum(dim=-1)


def fit_scale_min(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
                  use_mad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``, weights ``w`` float32 ``[N, n]`` -> (scale ``[N]``, m ``[N]``, m >= 0) so that
    ``x ~ scale * q - m``. Groups of one value (max == min) get scale 0 and ``m = -min``."""
    lo = x.amin(dim=-1).clamp(max=0)  # [N]: the grid always reaches down to 0 or below
    span = x.amax(dim=-1) - lo
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    offset = x - lo[:, None]
    scale = span / nmax
    codes = (offset * (nmax / span)[:, None]).round().clamp(0, nmax)
    best = _weighted_error(scale[:, None] * codes + lo[:, None] - x, w, use_mad)
    minimum = lo.clone()
    sum_w, sum_x = w.sum(dim=-1), (w * x).sum(dim=-1)
    for step in range(nstep + 1):
        codes = (offset * ((rmin + rdelta * step + nmax) / span)[:, None]).round().clamp(0, nmax)
        sum_l, sum_l2, sum_xl = (w * codes).sum(-1), (w * codes * codes).sum(-1), (w * codes * x).sum(-1)
        det = sum_w * sum_l2 - sum_l * sum_l
        safe_det = torch.where(det > 0, det, torch.ones_like(det))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_det
        positive = this_min > 0  # the minimum must not rise above 0: refit the scale alone
        this_scale = torch.where(positive, sum_xl / torch.where(sum_l2 > 0, sum_l2, torch.ones_like(sum_l2)),
                                 this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        error = _weighted_error(this_scale[:, None] * codes + this_min[:, None] - x, w, use_mad)
        better = (det > 0) & (error < best)
        best = torch.where(better, error, best)
        scale = torch.where(better, this_scale, scale)
        minimum = torch.where(better, this_min, minimum)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return scale, -minimum


def fit_signed_scale(x: torch.Tensor, w: torch.Tensor, nmax: int) -> torch.Tensor:
    """``x``, weights ``w`` float32 ``[N, n]`` -> signed scale ``[N]`` with ``x ~ scale * q``,
    ``q`` in ``-nmax..nmax-1``; 0 for an all-zero group."""
    index = x.abs().argmax(dim=-1, keepdim=True)
    peak = x.gather(-1, index).squeeze(-1)  # [N]: the signed value of largest magnitude
    zero = peak.abs() < GROUP_MAX_EPS
    peak = torch.where(zero, torch.ones_like(peak), peak)
    best_num = None
    scale = torch.zeros_like(peak)
    for step in (0, *range(-9, 0), *range(1, 10)):
        codes = (x * (-(nmax + 0.1 * step) / peak)[:, None]).round().clamp(-nmax, nmax - 1)
        sum_lx, sum_l2 = (w * x * codes).sum(-1), (w * codes * codes).sum(-1)
        this_scale = sum_lx / torch.where(sum_l2 > 0, sum_l2, torch.ones_like(sum_l2))
        if best_num is None:  # the first candidate is always taken
            scale, best_num = this_scale, sum_lx * this_scale
            continue
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best_num * sum_l2)
        scale = torch.where(better, this_scale, scale)
        best_num = torch.where(better, this_scale * sum_lx, best_num)
    return torch.where(zero, torch.zeros_like(scale), scale)


def quantize_superscales(scales: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative sub-block ``scales [n_sb, n_sub]`` -> (fp16 super-scale ``[n_sb]``, integer
    codes ``[n_sb, n_sub]`` in ``0..levels``) with ``scale ~ super * code`` (Q4_K, Q2_K)."""
    top = scales.amax(dim=-1)
    inverse = torch.where(top > 0, levels / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
    codes = (inverse[:, None] * scales).round().clamp(max=levels)
    return (top / levels).half(), codes


def quantize_signed_superscales(scales: torch.Tensor, levels: int, low: int, high: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed sub-block ``scales [n_sb, n_sub]`` -> (fp16 super-scale ``[n_sb]``, integer codes in
    ``low..high``): the scale of largest magnitude maps to ``-levels`` (Q3_K: 32, Q6_K: 128)."""
    index = scales.abs().argmax(dim=-1, keepdim=True)
    peak = scales.gather(-1, index).squeeze(-1)
    zero = peak == 0
    inverse = -levels / torch.where(zero, torch.ones_like(peak), peak)
    codes = (inverse[:, None] * scales).round().clamp(low, high)
    super_scale = torch.where(zero, torch.zeros_like(peak), 1 / inverse).half()
    return super_scale, torch.where(zero[:, None], torch.zeros_like(codes), codes)
