"""Charts of the number-format comparison (pure plotly, no Streamlit): quality against stored bits
per weight with the Pareto front, and per-layer error of two formats side by side."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memopt_core.charts.common import finite, hover_data, quality_axis, quality_yaxis, series_color, with_hover_columns
from memopt_core.charts.layers import layer_frame
from memopt_core.runs.pareto import pareto_mask

FAMILIES = {"int": "integer grid", "nf4": "NF4", "fp8-e4m3": "FP8", "fp8-e5m2": "FP8", "mxfp4": "FP4 microscaling",
            "nvfp4": "FP4 microscaling", "q2_k": "k-quants", "q3_k": "k-quants", "q4_k": "k-quants",
            "q6_k": "k-quants", "none": "uncompressed"}


def _family(row: pd.Series) -> str:
    family = FAMILIES.get(row.get("format", "int"), "integer grid")
    if row.get("quant_method") == "gptq":
        family = "GPTQ (integer grid)"
    return family + (" + rotation" if row.get("rotate", "none") == "hadamard" else "")


def format_tradeoff(table: pd.DataFrame) -> go.Figure:
    """Quality against stored bits per weight of the targeted layers (every scale byte counted): one
    marker per setting, coloured by format family and labelled; the Pareto front (nothing has fewer
    bits and better quality) as a dashed line; the original's quality as a dotted line."""
    metric, label = quality_axis(table)
    frame = with_hover_columns(table).assign(family=table.apply(_family, axis=1))
    higher_is_better = label.endswith("(higher is better)")
    quality = pd.Series(finite(frame[metric]), dtype=float, index=frame.index)
    losses = (-quality if higher_is_better else quality).fillna(np.inf).tolist()
    on_front = pareto_mask(frame["bits_per_weight"].astype(float).tolist(), losses)
    frame = frame.assign(front=[bool(f) and q == q for f, q in zip(on_front, quality)])  # a diverged run never is
    figure = go.Figure()
    for index, (family, part) in enumerate(frame.groupby("family", sort=False)):
        customdata, template = hover_data(part)
        figure.add_scatter(x=part["bits_per_weight"], y=finite(part[metric]), mode="markers+text", name=family,
                           text=part["setting"], textposition="top center", marker=dict(size=10,
                           color=series_color(index)), customdata=customdata, hovertemplate=template)
    front = frame[frame["front"]].sort_values("bits_per_weight")
    figure.add_scatter(x=front["bits_per_weight"], y=finite(front[metric]), mode="lines", name="Pareto front",
                       line=dict(color="black", dash="dash"), hoverinfo="skip")
    baseline = f"baseline_{metric}"
    if baseline in frame and frame[baseline].notna().any():
        figure.add_hline(y=float(frame[baseline].dropna().iloc[0]), line_dash="dot", line_color="#888",
                         annotation_text="original", annotation_position="bottom right")
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against stored bits per weight, every format",
                         xaxis_title="stored bits per weight of the targeted layers (scales included)",
                         yaxis=quality_yaxis(table, metric, label), hoverlabel=dict(align="left"))
    return figure


def _sqnr_grid(layers: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = layer_frame(layers)
    grid = frame.pivot_table(index="module_type", columns="block_label", values="sqnr_db", aggfunc="first", sort=False)
    order = sorted(grid.columns, key=lambda c: int(c.split()[-1]) if c.startswith("block ") else -1)
    return grid[order]


def layer_error_pair(layers_a: Sequence[dict[str, Any]], layers_b: Sequence[dict[str, Any]], label_a: str,
                     label_b: str) -> go.Figure:
    """Per-layer SQNR (dB) of two settings side by side on one colour scale, and their difference
    (B - A, positive where B keeps the layer closer to the original). Exact layers (+inf) are blank."""
    grid_a, grid_b = _sqnr_grid(layers_a), _sqnr_grid(layers_b)
    grid_b = grid_b.reindex(index=grid_a.index, columns=grid_a.columns)
    a, b = (np.where(np.isfinite(g.to_numpy(dtype=float)), g.to_numpy(dtype=float), np.nan) for g in (grid_a, grid_b))
    low, high = np.nanmin([np.nanmin(a), np.nanmin(b)]), np.nanmax([np.nanmax(a), np.nanmax(b)])
    difference = b - a
    reach = float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 1.0
    figure = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04,
                           subplot_titles=(label_a, label_b, f"{label_b} minus {label_a}"))
    x, y = list(grid_a.columns), list(grid_a.index)
    for col, z in ((1, a), (2, b)):
        figure.add_trace(go.Heatmap(z=z, x=x, y=y, zmin=low, zmax=high, colorscale="RdYlGn", showscale=col == 2,
                                    colorbar=dict(title="SQNR dB", x=0.64), name=(label_a, label_b)[col - 1],
                                    hovertemplate="%{y} in %{x}: %{z:.1f} dB<extra></extra>"), row=1, col=col)
    figure.add_trace(go.Heatmap(z=difference, x=x, y=y, zmin=-reach, zmax=reach, colorscale="RdBu",
                                colorbar=dict(title="dB", x=1.0), name="difference",
                                hovertemplate="%{y} in %{x}: %{z:+.1f} dB<extra></extra>"), row=1, col=3)
    figure.update_layout(title="Quantization error per layer, two formats side by side (SQNR in dB, higher = closer)")
    return figure
