"""Pruning masks as pure tensor functions.

A mask is a bool "keep" tensor of the weight's shape ``[out, in]``: ``True`` keeps a weight,
``False`` removes it. No function here changes its arguments. Counts follow
``torch.nn.utils.prune``: removing a fraction ``ratio`` of ``n`` items removes
``round(ratio * n)`` of them (Python's rounding, half to even).
"""
from __future__ import annotations

import torch
from torch import Tensor

from memopt_core.errors import ConfigError

# Largest bit pattern of a non-negative float32 (NaN included): the bisection's upper bound.
_MAX_FLOAT32_BITS = 0x7FFFFFFF


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"prune ratio {ratio} is out of range; choose a value from 0 to 1")


def _check_matrix(t: Tensor, what: str) -> None:
    if t.dim() != 2:
        raise ConfigError(f"{what} must be a matrix [out, in]; got shape {tuple(t.shape)}")


def count_zeros(t: Tensor) -> int:
    """Number of exact zeros (``-0.0`` included) in ``t`` of any shape."""
    return int((t == 0).sum())


def sparsity(t: Tensor) -> float:
    """Fraction of exact zeros in ``t`` of any shape; 0.0 for an empty tensor."""
    return count_zeros(t) / t.numel() if t.numel() else 0.0


def unstructured_mask_from_scores(scores: Tensor, ratio: float, per_row: bool = False) -> Tensor:
    """Keep mask removing the lowest ``scores``.

    ``scores``: ``[out, in]`` importance (``|w|`` for magnitude, Wanda's ``|w| * ||x||``).
    ``per_row=False`` removes ``round(ratio * out * in)`` over the whole tensor (ties broken
    like ``torch.nn.utils.prune.l1_unstructured``: both use ``topk``); ``per_row=True`` removes
    ``round(ratio * in)`` within every output row, as Wanda does, so the layer's sparsity is exact
    only when ``ratio * in`` is whole. Returns bool ``[out, in]``.
    """
    _check_ratio(ratio)
    _check_matrix(scores, "scores")
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if per_row:
        k = round(ratio * scores.shape[1])
        if k:
            drop = torch.topk(scores, k=k, dim=1, largest=False).indices  # [out, k]
            keep.scatter_(1, drop, False)
        return keep
    k = round(ratio * scores.numel())
    if k:
        drop = torch.topk(scores.reshape(-1), k=k, largest=False).indices  # [k]
        keep.view(-1)[drop] = False
    return keep


def magnitude_mask(w: Tensor, ratio: float) -> Tensor:
    """Keep mask removing the ``round(ratio * numel)`` smallest ``|w|`` of ``w`` ``[out, in]``.

    Same count and same choice as ``torch.nn.utils.prune.l1_unstructured``. Returns bool ``[out, in]``.
    """
    return unstructured_mask_from_scores(w.detach().abs(), ratio, per_row=False)


def _abs_bits(w: Tensor) -> Tensor:
    """Bit patterns of ``|w|`` as int32, flattened; they sort like the floats (all are >= 0)."""
    return w.detach().abs().float().reshape(-1).view(torch.int32)


def _kth_smallest_abs_bits(weights: list[Tensor], k: int) -> int:
    """Bit pattern of the k-th smallest ``|w|`` (1-based) over all ``weights``.

    Bisection over float32 bit patterns: 32 counting passes, but memory stays at one layer's
    temporaries, where concatenating ~100M weights for ``kthvalue`` would need ~1.6 GB.
    """
    lo, hi = 0, _MAX_FLOAT32_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        at_most = sum(int((_abs_bits(w) <= mid).sum()) for w in weights)
        lo, hi = (lo, mid) if at_most >= k else (mid + 1, hi)
    return lo


def global_magnitude_masks(weights: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Keep masks with one magnitude threshold across all ``weights`` (any shapes).

    Removes exactly ``round(ratio * total)`` weights, the smallest ``|w|`` overall, like
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``. Weights equal to the
    threshold are removed first-come in dict order, then flattened order, until the count is met
    (torch's ``topk`` may pick other ones among such exact ties). Returns bool masks by the same keys.
    """
    _check_ratio(ratio)
    k = round(ratio * sum(w.numel() for w in weights.values()))
    if k == 0:
        return {name: torch.ones(w.shape, dtype=torch.bool, device=w.device) for name, w in weights.items()}
    threshold = _kth_smallest_abs_bits(list(weights.values()), k)
    ties_to_drop = k - sum(int((_abs_bits(w) < threshold).sum()) for w in weights.values())
    masks = {}
    for name, w in weights.items():
        bits = _abs_bits(w)
        keep = bits > threshold  # [numel]
        ties = torch.nonzero(bits == threshold).flatten()
        keep[ties[ties_to_drop:]] = True  # only the first ties_to_drop ties (over all layers) go
        ties_to_drop = max(0, ties_to_drop - ties.numel())
        masks[name] = keep.view(w.shape)
    return masks


def l2_row_mask(w: Tensor, ratio: float) -> Tensor:
    """Keep mask removing the ``round(ratio * out)`` output rows of ``w`` ``[out, in]`` with the
    smallest L2 norm, as ``torch.nn.utils.prune.ln_structured(n=2, dim=0)``. Returns bool ``[out, in]``."""
    _check_ratio(ratio)
    _check_matrix(w, "weight")
    rows = w.shape[0]
    norms = torch.linalg.vector_norm(w.detach(), ord=2, dim=1)  # [out]
    kept_rows = torch.topk(norms, k=rows - round(ratio * rows), largest=True).indices
    row_keep = torch.zeros(rows, 1, dtype=torch.bool, device=w.device)
    row_keep[kept_rows] = True
    return row_keep.repeat(1, w.shape[1])


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M keep mask: the ``n`` highest ``scores`` of every ``m`` consecutive inputs of each row.

    ``scores``: ``[out, in]`` (``|w|`` for magnitude, Wanda scores for Wanda). When ``in`` is not a
    multiple of ``m``, the trailing ``in % m`` columns do not form a group and are kept dense, so
    the layer's sparsity is then a little below ``1 - n/m``. Returns bool ``[out, in]``.
    """
    _check_matrix(scores, "scores")
    if not 0 < n <= m:
        raise ConfigError(f"N:M pattern {n}:{m} is not valid; choose 0 < N <= M, e.g. 2:4 or 4:8")
    rows, cols = scores.shape
    grouped = cols - cols % m
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    groups = scores[:, :grouped].reshape(rows, grouped // m, m)  # [out, in // m, m]
    top = torch.topk(groups, k=n, dim=-1).indices  # [out, in // m, n]
    group_keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device).scatter_(-1, top, True)
    keep[:, :grouped] = group_keep.reshape(rows, grouped)
    return keep
