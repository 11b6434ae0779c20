"""What every chart shares: the palette, gaps for infinite values, log ticks, hover text and the quality axis."""
from __future__ import annotations

import math

import pandas as pd

from memopt_core.runs.rows import QUALITY_METRIC

_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")



_HOVER_FIGURES = (("setting", "setting", "{}"), ("perplexity", "perplexity", "{:.4g}"),
                  ("kl_divergence", "KL (nats/token)", "{:.4g}"), ("top1_agreement", "top-1 agreement", "{:.1%}"),
                  ("cosine_similarity", "cosine similarity", "{:.4f}"), ("accuracy", "accuracy", "{:.1%}"),
                  ("zero_shot_accuracy", "zero-shot accuracy", "{:.1%}"), ("stored_mib", "stored (MiB)", "{:,.2f}"),
                  ("bits_per_weight", "bits per weight", "{:.3f}"), ("x_smaller", "x smaller", "{:.2f}"),
                  ("sparsity", "sparsity", "{:.1%}"), ("measured_mib", "measured (MiB)", "{:,.1f}"),
                  ("simulated", "memory saving simulated", "{}"), ("calibration", "calibration", "{}"),
                  ("recovery", "recovery", "{}"),
                  ("sweep", "sweep", "{}"))



def series_color(index: int) -> str:
    """The palette colour of the ``index``-th series (lines, bar groups), cycling."""
    return _PALETTE[index % len(_PALETTE)]



def finite(values) -> list[float | None]:
    """Floats with +-inf and NaN replaced by None (a gap in a plotly trace)."""
    out = []
    for value in values:
        number = None if value is None else float(value)
        out.append(number if number is not None and math.isfinite(number) else None)
    return out



def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks covering [low, high] for a log axis (plotly's own show bare mantissas: '2', '5')."""
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    return inside or ticks



def quality_axis(table: pd.DataFrame) -> tuple[str, str]:
    metric, higher = QUALITY_METRIC[table["kind"].iloc[0]]
    return metric, f"{metric.replace('_', ' ')} ({'higher' if higher else 'lower'} is better)"



def quality_yaxis(table: pd.DataFrame, metric: str, label: str) -> dict:
    """A log axis with round ticks for perplexities spanning more than 10x, else a linear one."""
    values = pd.Series(finite(table[metric]), dtype=float).dropna()
    if metric == "perplexity" and not values.empty and values.max() > 10 * max(values.min(), 1e-9):
        return dict(title=label, type="log", tickvals=log_ticks(values.min(), values.max()))
    return dict(title=label, type="linear")



def with_hover_columns(table: pd.DataFrame) -> pd.DataFrame:
    extra = {}
    if "stored_bytes" in table:
        extra["stored_mib"] = table["stored_bytes"].astype(float) / 2**20
    if "measured_bytes" in table:
        extra["measured_mib"] = pd.to_numeric(table["measured_bytes"], errors="coerce") / 2**20
    return table.assign(**extra)



def format_value(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf (diverged)" if value > 0 else "-inf"
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)



def hover_data(part: pd.DataFrame) -> tuple[list[list[str]], str]:
    """customdata (every figure the row has, formatted here so infinities read as words) and a
    template naming each figure."""
    shown = [(c, label, fmt) for c, label, fmt in _HOVER_FIGURES if c in part and part[c].notna().any()]
    data = [[format_value(row[c], fmt) for c, _, fmt in shown] for _, row in part.iterrows()]
    lines = [f"{label}: %{{customdata[{i}]}}" for i, (_, label, _) in enumerate(shown)]
    return data, "<br>".join(lines) + "<extra></extra>"
