"""How an estimate converges: the running figure and its 95% band against tokens scored (pure plotly)."""
from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from memopt_core.charts.common import finite, series_color

CONVERGENCE_METRICS = {"perplexity_ratio": ("ratio_ci95", "Perplexity / original's (same tokens)"),
                       "perplexity": ("perplexity_ci95", "Perplexity"),
                       "kl_divergence": ("kl_ci95", "KL from original (nats/token)")}


def convergence(estimates: Sequence[dict[str, Any]], metric: str = "perplexity_ratio") -> go.Figure:
    """Estimate and 95% band of ``metric`` after each window (``Estimate.to_dict()`` rows, in order).

    The band is drawn where it exists (the ``window`` interval has none after one window); the
    last point is marked "exact" when every window was scored."""
    band_key, title = CONVERGENCE_METRICS[metric]
    tokens = [row["tokens"] for row in estimates]
    values = finite(row.get(metric) for row in estimates)
    bands = [row.get(band_key) or (None, None) for row in estimates]
    low, high = finite(b[0] for b in bands), finite(b[1] for b in bands)
    figure = go.Figure()
    color = series_color(0)
    figure.add_scatter(x=tokens, y=high, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip")
    figure.add_scatter(x=tokens, y=low, mode="lines", line=dict(width=0), fill="tonexty",
                       fillcolor="rgba(76,120,168,0.2)", name="95% interval", hoverinfo="skip")
    figure.add_scatter(x=tokens, y=values, mode="lines+markers", name="estimate", line=dict(color=color),
                       hovertemplate="%{x:,} tokens<br>%{y:.4g}<extra></extra>")
    if estimates and estimates[-1].get("exact"):
        figure.add_scatter(x=[tokens[-1]], y=[values[-1]], mode="markers", name="exact",
                           marker=dict(color=series_color(3), size=11, symbol="diamond"),
                           hovertemplate="exact: %{y:.4g}<extra></extra>")
    total = estimates[-1]["total_windows"] * (tokens[-1] // max(1, estimates[-1]["windows"])) if estimates else None
    figure.update_layout(title=f"{title} as windows are scored", xaxis_title="tokens scored",
                         yaxis_title=title, height=300, margin=dict(t=40, b=40, l=60, r=20),
                         legend=dict(orientation="h", y=-0.3))
    if total:
        figure.update_xaxes(range=[0, total * 1.02])
    return figure
