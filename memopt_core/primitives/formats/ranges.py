"""Clipping ranges from a histogram (pure tensor functions), as torch.ao's observers and TensorRT's
calibrators choose them, applied to weights.

A layer's grid groups (rows, or groups of a row) each have their own absmax. The magnitudes
``|w| / absmax of its group`` are pooled over the layer into one histogram on [0, 1]; one clip
ratio ``c`` in (0, 1] is chosen from it and every group's range shrinks to ``c`` times its own:

- ``percentile``: ``c`` is the 99.9th percentile of the pooled magnitudes (small groups, where
  1/g of the values sit at exactly 1.0, clip little or nothing: that is the honest answer);
- ``entropy``: TensorRT's KL criterion: for each candidate threshold, the histogram clipped there
  (the clipped mass added to its last bin) is compared with the same histogram merged into the
  grid's ``2**(bits-1)`` positive levels and spread back; the threshold with the least
  KL divergence wins.
"""
from __future__ import annotations

import numpy as np
import torch

PERCENTILE = 99.9
HISTOGRAM_BINS = 2048
CANDIDATE_STRIDE = 8  # every 8th bin is a candidate threshold: 256 candidates, well under a second per layer
_SMOOTHING = 1e-4
_MAX_SAMPLE = 1 << 22  # torch.quantile's input limit is 2**24; a fixed-seed sample is plenty beyond


def pooled_magnitudes(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """groups ``[rows, n_groups, g]`` + ``valid [n_groups, g]`` -> 1-D float32 ``|x| / absmax`` of the
    real entries of the groups that are not all zero."""
    magnitude = groups.detach().float().abs()
    absmax = magnitude.amax(dim=-1, keepdim=True)
    keep = valid.expand_as(magnitude) & (absmax > 0)
    return (magnitude / torch.where(absmax > 0, absmax, torch.ones_like(absmax)))[keep]


def _sample(values: torch.Tensor) -> torch.Tensor:
    if values.numel() <= _MAX_SAMPLE:
        return values
    index = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:_MAX_SAMPLE]
    return values[index.to(values.device)]


def percentile_ratio(magnitudes: torch.Tensor, percentile: float = PERCENTILE) -> float:
    """The ``percentile``-th percentile of the pooled magnitudes (1.0 when there are none)."""
    if magnitudes.numel() == 0:
        return 1.0
    return float(torch.quantile(_sample(magnitudes), percentile / 100.0).clamp(min=1e-6, max=1.0))


def _merged_back(hist: np.ndarray, levels: int) -> np.ndarray:
    """``hist [i]`` merged into ``levels`` bins, each spread evenly over its non-empty source bins."""
    q = np.zeros_like(hist)
    edges = np.linspace(0, hist.size, levels + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        chunk = hist[start:stop]
        filled = chunk > 0
        if filled.any():
            q[start:stop][filled] = chunk.sum() / filled.sum()
    return q


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = np.where(q > 0, q, _SMOOTHING * q.sum() / q.size if q.sum() > 0 else _SMOOTHING)
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_ratio(magnitudes: torch.Tensor, bits: int) -> float:
    """The clip ratio with the least KL divergence between the clipped and the quantized histogram."""
    if magnitudes.numel() == 0:
        return 1.0
    hist = torch.histc(magnitudes.float().cpu(), bins=HISTOGRAM_BINS, min=0.0, max=1.0).double().numpy()
    levels = 2 ** (bits - 1)
    best_kl, best_stop = np.inf, HISTOGRAM_BINS
    for stop in range(max(levels, CANDIDATE_STRIDE), HISTOGRAM_BINS + 1, CANDIDATE_STRIDE):
        reference = hist[:stop].copy()
        reference[-1] += hist[stop:].sum()  # the clipped values land on the threshold
        if reference.sum() == 0:
            continue
        divergence = _kl(reference, _merged_back(hist[:stop], levels))
        if divergence < best_kl:
            best_kl, best_stop = divergence, stop
    return best_stop / HISTOGRAM_BINS
