"""Pareto fronts over (memory, quality) points. Pure: lists (or a table) in, booleans out."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from memopt_core.runs.rows import QUALITY_METRIC


def pareto_mask(costs: Sequence[float], losses: Sequence[float]) -> list[bool]:
    """True where no other point is at least as good on both axes and strictly better on one.

    ``costs`` (e.g. stored bytes) and ``losses`` (e.g. perplexity; pass ``-cosine`` for a
    higher-is-better metric) are both minimised. NaN losses are never on the front; an infinite
    loss (a diverged model) is on it only when nothing costs less or as little. O(n log n).
    """
    points = [(c, l, i) for i, (c, l) in enumerate(zip(costs, losses)) if not math.isnan(l)]
    points.sort(key=lambda p: (p[0], p[1]))
    mask = [False] * len(costs)
    best_loss = math.inf
    previous: tuple[float, float] | None = None
    for cost, loss, index in points:
        if loss < best_loss or previous is None:  # the cheapest point is never dominated
            mask[index] = True
            best_loss = loss
            previous = (cost, loss)
        elif previous == (cost, loss):  # exact duplicates of a front point stay on the front
            mask[index] = True
    return mask


def mark_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """Add a boolean ``pareto`` column: lowest stored bytes for the quality, best quality for the bytes."""
    if table.empty:
        return table.assign(pareto=pd.Series(dtype=bool))
    metric, higher_is_better = QUALITY_METRIC[table["kind"].iloc[0]]
    quality = table[metric].astype(float)
    losses = (-quality if higher_is_better else quality).tolist()
    return table.assign(pareto=pareto_mask(table["stored_bytes"].astype(float).tolist(), losses))
