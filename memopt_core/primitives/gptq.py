"""GPTQ (Frantar et al., 2022): quantize a weight one input column at a time and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
reconstruction loss ``||X W^T - X Q^T||^2`` (``H = 2/n X^T X``).

Pure tensor functions; nothing here changes its arguments. The column sweep (:class:`OBSSweep`)
and the per-group grid (:class:`ColumnQuantizer`) are shared with SparseGPT.

Format: the result is a :class:`~memopt_core.primitives.quant.QuantizedWeight` exactly like
round-to-nearest's (codes ``[out, in]`` in the ORIGINAL column order, fp16 scale/zero per
(row, group) with groups of consecutive original columns and RTN's ragged last group), so a
``QuantLinear`` holds either and memory figures stay comparable.

Group scales are fitted when the first column of their group is reached, from the present
(already error-corrected) values of the group's columns. Without activation ordering this is the
reference implementation's rule; with it, columns are visited in the order of decreasing
Hessian diagonal while groups stay along the original order, so a group is fitted when its most
important column comes up. ``static_groups=True`` instead fits every group from the original
weight before the sweep (AutoGPTQ's "static groups").
"""
from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor

from memopt_core.config import QuantConfig, SolverConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.quant import QuantizedWeight, quantize_weight, zero_kind_of

_MAX_DAMP_RETRIES = 6


_THREADS = {"lock": threading.Lock(), "depth": 0, "saved": 1}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny per-column tensor ops on one thread. Worker threads only add hand-off cost there,
    and on a busy machine they spin waiting for a core: measured 25x slower on 2 shared cores.
    torch's thread count is process-wide, so nested and concurrent users (dashboard sessions)
    share one count: the first to enter lowers it, the last to leave restores it."""
    with _THREADS["lock"]:
        if _THREADS["depth"] == 0:
            _THREADS["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS["depth"] += 1
    try:
        yield
    finally:
        with _THREADS["lock"]:
            _THREADS["depth"] -= 1
            if _THREADS["depth"] == 0:
                torch.set_num_threads(_THREADS["saved"])


def hessian_order(h: Tensor) -> Tensor:
    """Activation order: input columns by decreasing Hessian diagonal (dead inputs count as 1,
    as in the reference), ties in index order. ``h [in, in]`` -> long ``[in]``."""
    diagonal = torch.diagonal(h).clone()
    diagonal[diagonal == 0] = 1.0
    return torch.argsort(diagonal, descending=True, stable=True)


def prepare_hessian(h: Tensor, damp: float, dtype: torch.dtype = torch.float32,
                    order: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``h [in, in]`` -> (``U [in, in]`` upper Cholesky factor of ``(H + damp*mean(diag) I)^-1``,
    ``dead [in]`` bool: inputs that were always zero), both in column ``order`` when given.
    ``h`` is not changed.

    Dead inputs get a unit diagonal (their weights never matter). If the dampened matrix is still
    not positive definite (too few samples), the dampening is raised tenfold, a few times."""
    h = h.detach().to(dtype).clone()
    if order is not None:
        h = h[order][:, order]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean = torch.diagonal(h).mean()
    eye = torch.eye(h.shape[0], dtype=dtype, device=h.device)
    damping = damp * mean
    for _ in range(_MAX_DAMP_RETRIES):
        with one_thread():  # a few ms on one core; far longer when two threads fight for busy cores
            factor, info = torch.linalg.cholesky_ex(h + eye * damping)
            if int(info) == 0:
                return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True), dead
        damping = torch.maximum(damping * 10, mean * 1e-4)
    raise ConfigError("the calibration Hessian is not positive definite even with strong dampening; "
                      "use more calibration samples or a larger dampening")


class OBSSweep:
    """Column-by-column optimal-brain-surgeon sweep with lazy batch updates.

    ``w [out, in]`` float (a private copy: changed), ``u [in, in]`` upper Cholesky factor of the
    inverse Hessian (in the sweep's column order). :meth:`run` calls ``step(position, column)``
    for each column in order; ``step`` returns the column's new value ``[out]`` and the rounding
    error ``(w - q) / u[p, p]`` is spread over the later columns: at once inside the current block
    of ``block_size`` columns, as one matrix product for the columns after it.
    """

    def __init__(self, w: Tensor, u: Tensor, block_size: int) -> None:
        self.w, self.u, self.block_size = w, u, block_size
        self.start = 0  # first column of the current block
        self.done = 0  # columns of the current block already visited
        self.block = w[:, :0]  # [out, b] present values of the current block
        self.errors = w[:, :0]  # [out, b] scaled errors of the visited columns of the block

    def current(self, positions: Tensor) -> Tensor:
        """Present values ``[out, k]`` of not-yet-visited columns at ``positions [k]`` (long)."""
        end = self.start + self.block.shape[1]
        values = self.w[:, positions].clone()  # [out, k]
        inside = (positions >= self.start) & (positions < end)
        values[:, inside] = self.block[:, positions[inside] - self.start]
        later = positions >= end
        if self.done and bool(later.any()):
            rows = slice(self.start, self.start + self.done)
            values[:, later] -= self.errors[:, :self.done] @ self.u[rows][:, positions[later]]
        return values

    def run(self, step: Callable[[int, Tensor], Tensor],
            on_block: Callable[[int, int], None] | None = None) -> Tensor:
        """Visit every column; returns the new weight ``[out, in]`` (sweep order)."""
        out = torch.zeros_like(self.w)
        with one_thread():
            self._sweep(out, step, on_block)
        return out

    def _sweep(self, out: Tensor, step: Callable[[int, Tensor], Tensor],
               on_block: Callable[[int, int], None] | None) -> None:
        columns = self.w.shape[1]
        for start in range(0, columns, self.block_size):
            end = min(start + self.block_size, columns)
            self.start, self.done = start, 0
            self.block = self.w[:, start:end].clone()  # [out, b]
            self.errors = torch.zeros_like(self.block)  # [out, b]
            u_block = self.u[start:end, start:end]  # [b, b]
            if on_block is not None:
                on_block(start, end)
            for i in range(end - start):
                column = self.block[:, i].clone()  # [out]
                new = step(start + i, column)  # [out]
                out[:, start + i] = new
                error = (column - new) / u_block[i, i]  # [out]
                self.block[:, i:] -= error[:, None] * u_block[i, i:][None, :]
                self.errors[:, i] = error
                self.done = i + 1
            self.w[:, end:] -= self.errors @ self.u[start:end, end:]  # [out, in - end]


def encode_column(w: Tensor, safe_scale: Tensor, zero: Tensor | None, bits: int, kind: str) -> Tensor:
    """RTN's encoding (``quant._encode``, same operations in the same order) for one column:
    ``w [out]``, float32 ``safe_scale`` (0 replaced by 1) and ``zero`` of shape ``[out]`` or ``[1]``
    -> uint8 codes ``[out]``. Spelled out here because the sweep calls it once per column."""
    if kind == "float":
        q = (w - zero).div_(safe_scale).round_()
    else:
        q = (w / safe_scale).round_().add_(zero if kind == "int" else 2 ** (bits - 1))
    return q.clamp_(0, 2 ** bits - 1).to(torch.uint8)


def decode_column(codes: Tensor, scale: Tensor, zero: Tensor | None, bits: int, kind: str) -> Tensor:
    """RTN's decoding (``quant._decode``) for one column of codes ``[out]`` -> float32 ``[out]``."""
    c = codes.float()
    if kind == "symmetric":
        return c.sub_(2 ** (bits - 1)).mul_(scale)
    if kind == "int":
        return c.sub_(zero).mul_(scale)
    return c.mul_(scale).add_(zero)


class ColumnQuantizer:
    """Quantizes single columns on RTN's grid, fitting each group's scale/zero on first use.

    ``order [in]``: original column index of each sweep position; ``read(positions) -> [out, k]``
    gives present values of sweep positions (``OBSSweep.current``). Codes are kept in the
    original column order; :meth:`result` returns them as a QuantizedWeight.
    """

    def __init__(self, cfg: QuantConfig, shape: tuple[int, int], order: Tensor, device: torch.device) -> None:
        out_f, in_f = shape
        self.shape, self.order, self.columns = shape, order, order.tolist()
        self.kind, self.bits = zero_kind_of(cfg), cfg.bits
        self.per_tensor = cfg.granularity == "per-tensor"
        self.group_size = min(cfg.group_size, in_f) if cfg.granularity == "group" else in_f
        n_groups = 1 if self.per_tensor else math.ceil(in_f / self.group_size)
        rows = 1 if self.per_tensor else out_f
        self.position = torch.empty_like(order)
        self.position[order] = torch.arange(in_f, device=order.device)  # original column -> sweep position
        self.scale = torch.zeros(rows, n_groups, dtype=torch.float16, device=device)
        self.zero = None if self.kind == "symmetric" else torch.zeros_like(self.scale)
        self.params: list[tuple[Tensor, Tensor, Tensor | None] | None] = [None] * n_groups  # float32, per group
        self.codes = torch.zeros(shape, dtype=torch.uint8, device=device)
        # A group is fitted on its own columns as one row-wise (or tensor-wide) range.
        self._fit_cfg = cfg if self.per_tensor else dataclasses.replace(cfg, granularity="per-channel")

    def fit_group(self, group: int, read: Callable[[Tensor], Tensor]) -> None:
        first = group * self.group_size
        columns = torch.arange(first, min(first + self.group_size, self.shape[1]), device=self.order.device)
        fitted = quantize_weight(read(self.position[columns]), self._fit_cfg)  # scale [rows, 1]
        self.scale[:, group] = fitted.scale[:, 0]
        if self.zero is not None:
            self.zero[:, group] = fitted.zero[:, 0]
        scale = fitted.scale[:, 0].float()  # [rows]
        zero = None if fitted.zero is None else fitted.zero[:, 0].float()
        self.params[group] = (scale, torch.where(scale == 0, torch.ones_like(scale), scale), zero)

    def fit_all(self, read: Callable[[Tensor], Tensor]) -> None:
        for group in range(len(self.params)):
            self.fit_group(group, read)

    def quantize(self, position: int, column: Tensor, read: Callable[[Tensor], Tensor],
                 keep: Tensor | None = None) -> Tensor:
        """Quantize the column ``[out]`` at sweep ``position``; ``keep [out]`` bool forces pruned
        weights to exactly 0. Returns the value the stored layer will compute with ``[out]``."""
        original = self.columns[position]
        group = 0 if self.per_tensor else original // self.group_size
        if self.params[group] is None:
            self.fit_group(group, read)
        scale, safe_scale, zero = self.params[group]
        if keep is not None:
            column = column * keep
        codes = encode_column(column, safe_scale, zero, self.bits, self.kind)  # [out]
        self.codes[:, original] = codes
        value = decode_column(codes, scale, zero, self.bits, self.kind).to(column.dtype)
        # A float-minimum grid cannot hold 0: the stored layer keeps a mask, so compute with 0 here too.
        return value if keep is None else value * keep

    def result(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes, self.scale, self.zero, self.bits, self.group_size, self.kind, self.shape)


def _work_dtype(w: Tensor) -> torch.dtype:
    """float64 in, float64 maths (for exact comparisons in tests); otherwise float32."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _check_shapes(w: Tensor, h: Tensor, keep: Tensor | None) -> None:
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"GPTQ needs a weight [out, in] and a Hessian [in, in]; got {tuple(w.shape)} "
                          f"and {tuple(h.shape)}")
    if keep is not None and keep.shape != w.shape:
        raise ConfigError(f"keep mask shape {tuple(keep.shape)} differs from the weight's {tuple(w.shape)}")


def gptq_quantize(w: Tensor, h: Tensor, cfg: QuantConfig, options: SolverConfig = SolverConfig(),
                  keep: Tensor | None = None) -> QuantizedWeight:
    """GPTQ-quantize ``w [out, in]`` given ``h [in, in]`` (``2/n X^T X`` of the layer's inputs).

    ``cfg``: bits 2-8, symmetric / asymmetric, per-channel / per-tensor / group (as RTN).
    ``keep [out, in]`` bool (optional): weights already pruned stay exactly 0 and the others
    absorb their error. Inputs with zero Hessian diagonal ("dead") get weight 0, as in the
    reference. Arguments are not changed; returns codes in the original column order.
    """
    _check_shapes(w, h, keep)
    dtype = _work_dtype(w)
    h = h.detach().to(w.device)
    order = hessian_order(h) if options.act_order else torch.arange(w.shape[1], device=w.device)
    u, dead = prepare_hessian(h, options.damp, dtype, order)
    weight = w.detach().to(dtype)[:, order].clone()  # [out, in] in sweep order
    weight[:, dead] = 0
    keep_sweep = None if keep is None else keep[:, order]
    sweep = OBSSweep(weight, u, options.block_size)
    grid = ColumnQuantizer(cfg, tuple(w.shape), order, w.device)
    if options.static_groups:
        grid.fit_all(sweep.current)
    sweep.run(lambda p, column: grid.quantize(p, column, sweep.current,
                                              None if keep_sweep is None else keep_sweep[:, p]))
    return grid.result()
