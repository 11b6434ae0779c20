"""Rounding onto a quantized layer's grid with a straight-through estimator (pure tensor functions).

Forward: the latent weight ``w [out, in]`` is rounded onto the grid of fp16 ``scale`` / ``zero``
``[rows, n_groups]`` (rows = out, or 1 per-tensor) exactly as ``primitives.quant`` decodes stored
codes, so what trains computes bit for bit what the exported layer will. Backward (LSQ, Esser et
al. 2020; ``torch._fake_quantize_learnable_per_channel_affine``'s rule): the gradient reaches ``w``
as the identity where the rounded code lies inside the grid and not at all outside; the scale gets
``(q - z) - (w/s) * inside`` per weight (``q`` the code), a float minimum ``1 - inside``; fp16
rounding of scale and minimum passes straight through.

One autograd function instead of a chain of tensor ops: on SmolLM2's 106M targeted weights the
chain allocated a dozen full-size intermediates per step and took as long as the matmuls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    """A quantized layer's grid: ``bits``, ``zero_kind`` ('symmetric', 'int', 'float') and
    ``group_size`` input columns per scale (the whole row for per-channel and per-tensor)."""

    bits: int
    zero_kind: str
    group_size: int

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1


def _regular(w: Tensor, grid: Grid) -> bool:
    return w.shape[1] % grid.group_size == 0


def grouped(t: Tensor, grid: Grid) -> Tensor:
    """``[out, in]`` -> ``[out, n_groups, group_size]`` (a view) when groups are whole, else as is."""
    return t.view(t.shape[0], -1, grid.group_size) if _regular(t, grid) else t


def expand(p: Tensor, w: Tensor, grid: Grid) -> Tensor:
    """Per-group ``p [rows, n_groups]`` broadcastable against ``grouped(w)``."""
    if _regular(w, grid):
        return p[..., None]  # [rows, n_groups, 1]
    columns = torch.arange(w.shape[1], device=w.device) // grid.group_size
    return p[:, columns]  # [rows, in]: a ragged last group


def reduce(t: Tensor, rows: int, n_groups: int, grid: Grid) -> Tensor:
    """Sum a per-weight ``t`` (shaped like ``grouped(w)``) back to its scale's ``[rows, n_groups]``."""
    if t.dim() == 3:
        per_group = t.sum(-1)  # [out, n_groups]
    else:
        columns = torch.arange(t.shape[1], device=t.device) // grid.group_size
        per_group = t.new_zeros(t.shape[0], n_groups).index_add_(1, columns, t)
    return per_group.sum(0, keepdim=True) if rows == 1 else per_group


def decode(codes: Tensor, s: Tensor, z: Tensor, zero_kind: str) -> Tensor:
    """Float codes -> weight (a new tensor), with the operation order of ``primitives.quant``."""
    if zero_kind == "float":
        return (codes * s).add_(z)
    return (codes - z).mul_(s)


@torch.no_grad()
def grid_codes(w: Tensor, scale: Tensor, zero: Tensor | None, grid: Grid,
               keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Round ``w [out, in]`` onto the grid. Returns ``(codes, raw, inside, s, z)`` shaped like
    ``grouped(w)``: float codes ``0..2**bits-1``, the unrounded position, whether the rounded code
    was inside the grid, and the fp16-rounded scale and zero (or minimum) broadcastable to them.
    With ``keep`` (bool ``[out, in]``), a kept weight never decodes to 0 (it moves one level) and,
    on grids with a zero code, a pruned weight takes it. Arguments are not changed."""
    s = expand(scale.detach().half().float(), w, grid)
    s_safe = torch.where(s == 0, torch.ones_like(s), s)  # an all-zero group decodes to 0 whatever its codes
    wg = grouped(w.detach(), grid)
    if grid.zero_kind == "float":
        z = expand(zero.detach().half().float(), w, grid)  # the group minimum
        raw = (wg - z).div_(s_safe)
    else:
        z = expand(zero.float(), w, grid) if grid.zero_kind == "int" else s.new_tensor(2.0 ** (grid.bits - 1))
        raw = (wg / s_safe).add_(z)
    codes = raw.round()
    inside = (codes >= 0) & (codes <= grid.levels)
    codes.clamp_(0, grid.levels)
    if keep is not None:
        codes = _avoid_zero(codes, raw, s, z, grouped(keep, grid), grid)
    return codes, raw, inside, s, z


def _avoid_zero(codes: Tensor, raw: Tensor, s: Tensor, z: Tensor, keep: Tensor, grid: Grid) -> Tensor:
    """Kept weights that would decode to exactly 0 move one level toward their unrounded side (or
    the side that exists); pruned weights take the zero code where the grid has one."""
    zero_at = -z / torch.where(s == 0, torch.ones_like(s), s) if grid.zero_kind == "float" else z
    zero_at = zero_at.expand_as(codes)  # the position of 0 in code units
    up = ((raw >= zero_at) & (codes < grid.levels)) | (codes == 0)
    at_zero = keep & (decode(codes, s, z, grid.zero_kind) == 0)
    codes = torch.where(at_zero, torch.where(up, codes + 1, codes - 1), codes)
    if grid.zero_kind == "float":  # no zero code: the stored bitmask zeroes pruned weights
        return codes
    return torch.where(keep, codes, zero_at)


class _RoundToGrid(torch.autograd.Function):
    """``fake_quantize`` with its straight-through / LSQ backward (see the module doc)."""

    @staticmethod
    def forward(ctx, w: Tensor, scale: Tensor, zero: Tensor | None, grid: Grid, keep: Tensor | None) -> Tensor:
        codes, raw, inside, s, z = grid_codes(w, scale, zero, grid, keep)
        ctx.grid, ctx.shape, ctx.has_zero = grid, (scale.shape[0], scale.shape[1]), zero is not None
        ctx.save_for_backward(codes, raw, inside, s, z)
        return decode(codes, s, z, grid.zero_kind).view(w.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        codes, raw, inside, s, z = ctx.saved_tensors
        grid, (rows, n_groups) = ctx.grid, ctx.shape
        g = grouped(grad.contiguous(), grid)
        grad_w = (g * inside).view(grad.shape)
        if grid.zero_kind == "float":  # value = q s + m, raw = (w - m) / s
            d_scale = codes.sub_(raw.mul_(inside))
            grad_zero = reduce(g * ~inside, rows, n_groups, grid)
        else:  # value = (q - z) s, raw = w / s + z
            d_scale = codes.sub_(z).sub_(raw.sub_(z).mul_(inside))
            grad_zero = None
        grad_scale = reduce(g * d_scale, rows, n_groups, grid)
        return grad_w, grad_scale, grad_zero if ctx.has_zero and grid.zero_kind == "float" else None, None, None


def fake_quantize(w: Tensor, scale: Tensor, zero: Tensor | None, grid: Grid, keep: Tensor | None = None) -> Tensor:
    """``w [out, in]`` rounded onto the grid (same shape, float32), differentiable in ``w``, ``scale``
    and a float minimum ``zero`` (an integer zero point gets no gradient)."""
    return _RoundToGrid.apply(w, scale, zero, grid, keep)
