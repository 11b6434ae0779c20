"""A recovery's curve as a plotly figure (pure: points in, figure out; no Streamlit)."""
from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from memopt_core.charts import finite, series_color

METRIC_LABELS = {"perplexity": "validation perplexity (held-out windows)",
                 "cosine": "validation cosine to the original (held-out sentences)"}


def recovery_curve(points: Sequence[dict[str, Any]], metric: str, original: float | None = None) -> go.Figure:
    """Validation metric (left axis) and mean training loss (right axis) against steps.

    ``points``: dicts with ``step``, ``validation``, ``loss`` (None at step 0) and ``best`` (the
    checkpoint kept so far is starred); ``original``: the original's value of the metric on the
    same held-out set, drawn as a dotted line (perplexity), or 1 for cosine."""
    steps = [p["step"] for p in points]
    figure = go.Figure()
    figure.add_scatter(x=steps, y=finite(p["validation"] for p in points), mode="lines+markers",
                       name=METRIC_LABELS[metric], marker_color=series_color(0),
                       hovertemplate="step %{x}<br>%{y:.4g}<extra>validation</extra>")
    best = [p for p in points if p.get("best")]
    if best:
        figure.add_scatter(x=[best[-1]["step"]], y=finite([best[-1]["validation"]]), mode="markers",
                           name="best checkpoint so far", marker=dict(symbol="star", size=14, color="gold"),
                           hovertemplate="kept: step %{x}, %{y:.4g}<extra></extra>")
    losses = [p for p in points if p.get("loss") is not None]
    figure.add_scatter(x=[p["step"] for p in losses], y=finite(p["loss"] for p in losses), mode="lines",
                       name="training loss (mean since the previous point)", yaxis="y2",
                       line=dict(color=series_color(1), dash="dot"),
                       hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>")
    if original is not None:
        figure.add_hline(y=original, line_dash="dash", line_color="#444",
                         annotation_text="original" if metric == "perplexity" else "identical to the original")
    log = metric == "perplexity" and len(finite(p["validation"] for p in points)) > 0
    figure.update_layout(title="Recovery: quality on held-out data while training",
                         xaxis_title="optimizer step", yaxis=dict(title=METRIC_LABELS[metric],
                                                                  type="log" if log else "linear"),
                         yaxis2=dict(title="training loss", overlaying="y", side="right", showgrid=False),
                         legend=dict(orientation="h", y=-0.25))
    return figure
