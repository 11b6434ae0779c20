"""Per-layer charts of one run: sparsity, bytes before and after, the weight histogram, block x module heatmaps."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memopt_core.charts.common import series_color

MAX_GRID_LINES = 64  # a 6-bit grid; finer grids would hide the histogram behind their lines



def layer_frame(layers: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(layers))
    frame["block_label"] = frame["block"].map(lambda b: "-" if pd.isna(b) else f"block {int(b)}")
    return frame



def sparsity_by_layer(layers: Sequence[dict[str, Any]]) -> go.Figure:
    """One bar per targeted layer: x is the block, one bar (and colour) per module type in it."""
    frame = layer_frame(layers)
    figure = go.Figure()
    for index, (module_type, part) in enumerate(frame.groupby("module_type", sort=False)):
        figure.add_bar(x=part["block_label"], y=part["sparsity"], name=module_type,
                       marker_color=series_color(index), customdata=part[["name"]],
                       hovertemplate="%{customdata[0]}<br>sparsity %{y:.1%}<extra></extra>")
    figure.update_layout(title="Sparsity per layer (zeros counted from the weights)", barmode="group",
                         yaxis=dict(title="sparsity", tickformat=".0%", range=[0, 1]), legend_title="module")
    return figure



def bytes_by_layer(layers: Sequence[dict[str, Any]]) -> go.Figure:
    """Dense vs stored weight bytes of each targeted layer: two bars per layer."""
    frame = layer_frame(layers)
    figure = go.Figure()
    figure.add_bar(x=frame["name"], y=frame["dense_bytes"], name="before (dense)", marker_color=series_color(0),
                   hovertemplate="%{x}<br>%{y:,} bytes before<extra></extra>")
    figure.add_bar(x=frame["name"], y=frame["stored_bytes"], name="after (stored)", marker_color=series_color(1),
                   customdata=frame[["bits"]], hovertemplate="%{x}<br>%{y:,} bytes stored, "
                   "%{customdata[0]:.2f} bits/weight<extra></extra>")
    figure.update_layout(title="Weight bytes per layer, before and after", barmode="group",
                         yaxis_title="bytes", xaxis=dict(showticklabels=len(frame) <= 40))
    return figure



def weight_histogram(before: Sequence[float], after: Sequence[float], grid: Sequence[float] = (),
                     layer: str = "", bins: int = 120, rotated: Sequence[float] = (),
                     clip: Sequence[float] = ()) -> go.Figure:
    """Histogram of one layer's weights before and after (shared bins, so the bars line up), with
    the quantization grid of its first group as dotted lines and a marker trace at zero height;
    ``rotated`` (the weights in the rotated basis the quantizer sees) as a third histogram and
    ``clip`` (a histogram range's clipped interval) as two dashed red lines, when given.

    Counts are computed here (numpy), so the figure carries ``bins`` numbers per trace instead of
    every weight. The axis spans the central 99.8% of the original weights (and the grid, when it
    is not far wider); values beyond are counted in the end bins, so every weight is in a bar.
    Grids finer than :data:`MAX_GRID_LINES` levels are drawn as markers only."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    low, high = _histogram_range(before, np.asarray(grid, dtype=float))
    edges = np.linspace(low, high, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    figure = go.Figure()
    traces = [("original", before), ("compressed", after)]
    if len(rotated):
        traces.append(("rotated W Q (what is quantized)", np.asarray(rotated, dtype=float)))
    tallest = 0
    for index, (name, data) in enumerate(traces):
        counts, _ = np.histogram(np.clip(data, low, high), bins=edges)
        tallest = max(tallest, int(counts.max(initial=0)))
        figure.add_bar(x=centres, y=counts, width=width, name=name, opacity=0.6, marker_color=series_color(index),
                       hovertemplate=f"{name}: %{{y:,}} weights near %{{x:.4g}}<extra></extra>")
    if len(grid):
        figure.add_scatter(x=list(map(float, grid)), y=[0] * len(grid), mode="markers", name="quantization grid",
                           marker=dict(symbol="line-ns-open", size=14, color="#444"),
                           hovertemplate="grid level %{x:.4g}<extra></extra>")
        if len(grid) <= MAX_GRID_LINES:
            figure.add_trace(_grid_lines(grid, tallest))
    for bound in clip:
        figure.add_vline(x=float(bound), line_width=2, line_dash="dash", line_color="#E45756",
                         annotation_text="clip", annotation_position="top")
    figure.update_layout(title=f"Weights of {layer} before and after (dotted: quantization grid of its first group)",
                         barmode="overlay", bargap=0, xaxis_title="weight value", yaxis_title="count")
    return figure



def _grid_lines(grid: Sequence[float], top: int) -> go.Scatter:
    """One dotted vertical line per grid level, from 0 to ``top``, as a single trace (x, x, gap per
    level): one SVG path, where a layout shape per level made Chromium spend about 0.2 CPU s more
    on each draw of a 64-level grid."""
    xs = [value for level in grid for value in (float(level), float(level), None)]
    ys = [value for _ in grid for value in (0, top, None)]
    return go.Scatter(x=xs, y=ys, mode="lines", name="grid lines", showlegend=False, hoverinfo="skip",
                      line=dict(width=1, dash="dot", color="#888"))


def _histogram_range(values: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    """The central 99.8% of ``values`` with a 5% margin, widened to hold the grid unless that
    would squeeze the weights into a few bins (an outlier in the first group stretches its grid)."""
    finite_values = values[np.isfinite(values)]
    low, high = np.percentile(finite_values, [0.1, 99.9]) if finite_values.size else (-1.0, 1.0)
    if grid.size and grid.max() - grid.min() <= 3 * (high - low):
        low, high = min(low, grid.min()), max(high, grid.max())
    if high <= low:
        low, high = low - 1.0, high + 1.0
    margin = 0.05 * (high - low)
    return float(low - margin), float(high + margin)



def layer_heatmap(layers: Sequence[dict[str, Any]], value: str = "sqnr_db") -> go.Figure:
    """Block x module-type heatmap of a per-layer value (SQNR in dB, sparsity ...).

    An exact reconstruction (SQNR +inf dB) shows as a blank cell marked 'exact'."""
    frame = layer_frame(layers)
    raw = frame.pivot_table(index="module_type", columns="block_label", values=value, aggfunc="first", sort=False)
    raw = raw[sorted(raw.columns, key=_block_order)]
    z = raw.to_numpy(dtype=float)
    text = np.where(np.isposinf(z), "exact", "")
    figure = go.Figure(go.Heatmap(z=np.where(np.isfinite(z), z, np.nan), x=list(raw.columns), y=list(raw.index),
                                  text=text, texttemplate="%{text}", customdata=np.where(np.isposinf(z), "inf", z),
                                  colorscale="RdYlGn" if value == "sqnr_db" else "Blues", colorbar_title=value,
                                  hovertemplate="%{y} in %{x}: %{customdata}<extra></extra>"))
    title = "Quantization error per layer: SQNR in dB (lower = more damage)" if value == "sqnr_db" \
        else f"{value.replace('_', ' ').capitalize()} per layer"
    figure.update_layout(title=title, xaxis_title="block", yaxis_title="module")
    return figure



def _block_order(label: str) -> int:
    return int(label.split()[-1]) if label.startswith("block ") else -1
