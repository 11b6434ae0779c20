"""SparseGPT (Frantar & Alistarh, 2023): prune a weight column by column and update the weights not
yet visited to absorb each pruned weight's error, with the same inverse-Hessian sweep as GPTQ.

Masks: unstructured masks are chosen per block of ``block_size`` columns from the OBS saliency
``w^2 / [H^-1]_jj^2`` over the whole block (the paper's adaptive mask selection); N:M masks per
group of M consecutive columns when the sweep reaches it. Columns are swept in the original
order so N:M groups stay contiguous. With a QuantConfig the kept weights are GPTQ-quantized in
the same pass (joint sparsification and quantization, as in the paper's section 4).

Pure tensor functions; nothing here changes its arguments.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from memopt_core.config import QuantConfig, SolverConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.gptq import ColumnQuantizer, OBSSweep, prepare_hessian
from memopt_core.primitives.quant import QuantizedWeight
from memopt_core.primitives.sparsity import nm_mask


@dataclass
class SparseGPTResult:
    """``weight [out, in]``: the pruned, updated weight (dequantized values when quantized), in the
    input's dtype; ``keep [out, in]`` bool; ``quantized``: the packed form when a QuantConfig was given."""

    weight: Tensor
    keep: Tensor
    quantized: QuantizedWeight | None


def _block_drop_count(ratio: float, rows: int, start: int, end: int) -> int:
    """Weights to prune in columns ``start:end``: differences of the rounded cumulative counts, so the
    layer loses exactly ``round(ratio * rows * in)`` weights in total."""
    return round(ratio * rows * end) - round(ratio * rows * start)


class _MaskChooser:
    """Keep mask built during the sweep: per block (unstructured) or per N:M group."""

    def __init__(self, sweep: OBSSweep, shape: tuple[int, int], ratio: float, n: int, m: int) -> None:
        self.sweep, self.ratio, self.n, self.m = sweep, ratio, n, m
        self.keep = torch.ones(shape, dtype=torch.bool, device=sweep.w.device)  # [out, in]
        self.grouped = shape[1] - shape[1] % m if m else 0  # N:M columns; a ragged tail stays dense

    def _saliency(self, start: int, end: int) -> Tensor:
        """OBS error of pruning each weight alone, ``w^2 / [H^-1]_jj^2`` -> ``[out, end - start]``."""
        values = self.sweep.block[:, start - self.sweep.start:end - self.sweep.start]
        diagonal = torch.diagonal(self.sweep.u)[start:end]
        return values.pow(2) / diagonal.pow(2)[None, :]

    def on_block(self, start: int, end: int) -> None:
        if self.m:
            return
        k = _block_drop_count(self.ratio, self.keep.shape[0], start, end)
        if k:
            saliency = self._saliency(start, end).reshape(-1)
            drop = torch.topk(saliency, k, largest=False).indices
            block_keep = self.keep[:, start:end].reshape(-1).clone()
            block_keep[drop] = False
            self.keep[:, start:end] = block_keep.view(self.keep.shape[0], end - start)

    def column(self, position: int) -> Tensor:
        """Keep mask ``[out]`` of the column at ``position`` (choosing its N:M group's mask first)."""
        if self.m and position % self.m == 0 and position + self.m <= self.grouped:
            self.keep[:, position:position + self.m] = nm_mask(self._saliency(position, position + self.m),
                                                               self.n, self.m)
        return self.keep[:, position]


def _check(w: Tensor, h: Tensor, ratio: float, n: int, m: int, block_size: int) -> None:
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"SparseGPT needs a weight [out, in] and a Hessian [in, in]; got {tuple(w.shape)} "
                          f"and {tuple(h.shape)}")
    if m and not 0 < n <= m:
        raise ConfigError(f"N:M pattern {n}:{m} is not valid; choose 0 < N <= M, e.g. 2:4 or 4:8")
    if m and block_size % m:
        raise ConfigError(f"the block size {block_size} must be a multiple of M={m} for N:M pruning")
    if not m and not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prune ratio {ratio} is out of range; choose a value from 0 to below 1")


def sparsegpt_prune(w: Tensor, h: Tensor, ratio: float = 0.5, n: int = 0, m: int = 0,
                    quant: QuantConfig | None = None, options: SolverConfig = SolverConfig()) -> SparseGPTResult:
    """Prune ``w [out, in]`` given ``h [in, in]`` (``2/n X^T X``): a fraction ``ratio`` of the weights
    (exactly ``round(ratio * out * in)``), or with ``m > 0`` keep ``n`` of every ``m`` consecutive
    inputs of each row (``ratio`` ignored). With ``quant`` the kept weights are also quantized
    (GPTQ in the same sweep; ``options.act_order`` is not used). Arguments are not changed.
    """
    _check(w, h, ratio, n, m, options.block_size)
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    u, dead = prepare_hessian(h.detach().to(w.device), options.damp, dtype)
    weight = w.detach().to(dtype).clone()  # [out, in]
    weight[:, dead] = 0
    sweep = OBSSweep(weight, u, options.block_size)
    masks = _MaskChooser(sweep, tuple(w.shape), ratio, n, m)
    grid = None
    if quant is not None:
        grid = ColumnQuantizer(quant, tuple(w.shape), torch.arange(w.shape[1], device=w.device), w.device)
        if options.static_groups:
            grid.fit_all(sweep.current)

    def step(position: int, column: Tensor) -> Tensor:
        keep = masks.column(position)  # [out]
        if grid is None:
            return column * keep
        return grid.quantize(position, column, sweep.current, keep)

    new = sweep.run(step, masks.on_block)  # [out, in]
    return SparseGPTResult(weight=new.to(w.dtype), keep=masks.keep,
                           quantized=None if grid is None else grid.result())
