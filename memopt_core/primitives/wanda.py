"""Wanda (Sun et al., 2023): prune by weight magnitude times input activation norm.

Score ``S_ij = |W_ij| * ||X_j||_2`` where ``X_j`` is input feature ``j`` over all calibration tokens;
the lowest scores are removed within each output row (unstructured) or within each group of M
consecutive inputs (N:M). No weight is updated. Pure tensor functions; arguments are not changed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from memopt_core.errors import ConfigError
from memopt_core.primitives.sparsity import nm_mask, unstructured_mask_from_scores


def wanda_scores(w: Tensor, input_sq_norms: Tensor) -> Tensor:
    """``|w| * sqrt(input_sq_norms)``: ``w [out, in]``, ``input_sq_norms [in]`` (sum over calibration
    tokens of each input feature squared) -> float32 ``[out, in]``."""
    if w.dim() != 2 or input_sq_norms.shape != (w.shape[1],):
        raise ConfigError(f"Wanda needs a weight [out, in] and input norms [in]; got {tuple(w.shape)} "
                          f"and {tuple(input_sq_norms.shape)}")
    norms = input_sq_norms.detach().float().clamp(min=0).sqrt().to(w.device)  # [in]
    return w.detach().float().abs() * norms[None, :]


def wanda_mask(w: Tensor, input_sq_norms: Tensor, ratio: float = 0.5, n: int = 0, m: int = 0) -> Tensor:
    """Keep mask bool ``[out, in]``: remove ``round(ratio * in)`` lowest-scoring weights of every row,
    or with ``m > 0`` keep the ``n`` highest of every ``m`` consecutive inputs (``ratio`` ignored)."""
    scores = wanda_scores(w, input_sq_norms)
    if m:
        return nm_mask(scores, n, m)
    return unstructured_mask_from_scores(scores, ratio, per_row=True)


def input_sq_norms_from_hessian(h: Tensor, tokens: int) -> Tensor:
    """``||X_j||^2 [in]`` from ``h = 2/tokens X^T X [in, in]`` (its diagonal), so one pass serves both."""
    return torch.diagonal(h).detach().float() * (tokens / 2.0)
