"""Result objects -> plotly figures. Pure (no Streamlit): testable on the figure's data.

Every figure's title says what it shows; callers add the one-line caption about whether the
memory saving is real (packed storage) or simulated (fake quantization, masks held dense).
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from memopt_core.memory import GIB
from memopt_core.results import QUALITY_METRIC

_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")


def _color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _layer_frame(layers: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(layers))
    frame["block_label"] = frame["block"].map(lambda b: "-" if pd.isna(b) else f"block {int(b)}")
    return frame


def sparsity_by_layer(layers: Sequence[dict[str, Any]]) -> go.Figure:
    """One bar per targeted layer (x grouped by block), coloured by module type."""
    frame = _layer_frame(layers)
    figure = go.Figure()
    for index, (module_type, part) in enumerate(frame.groupby("module_type", sort=False)):
        figure.add_bar(x=[part["block_label"], part["module_type"]], y=part["sparsity"], name=module_type,
                       marker_color=_color(index), customdata=part[["name"]],
                       hovertemplate="%{customdata[0]}<br>sparsity %{y:.1%}<extra></extra>")
    figure.update_layout(title="Sparsity per layer (zeros counted from the weights)", barmode="group",
                         yaxis=dict(title="sparsity", tickformat=".0%", range=[0, 1]), legend_title="module")
    return figure


def bytes_by_layer(layers: Sequence[dict[str, Any]]) -> go.Figure:
    """Dense vs stored weight bytes of each targeted layer."""
    frame = _layer_frame(layers)
    figure = go.Figure()
    figure.add_bar(x=frame["name"], y=frame["dense_bytes"], name="before (dense)", marker_color=_color(0))
    figure.add_bar(x=frame["name"], y=frame["stored_bytes"], name="after (stored)", marker_color=_color(1),
                   customdata=frame[["bits"]], hovertemplate="%{x}<br>%{y:,} bytes, %{customdata[0]:.2f} bits/weight"
                   "<extra></extra>")
    figure.update_layout(title="Weight bytes per layer, before and after", barmode="group",
                         yaxis_title="bytes", xaxis=dict(showticklabels=len(frame) <= 40))
    return figure


def weight_histogram(before: Sequence[float], after: Sequence[float], grid: Sequence[float] = (),
                     layer: str = "") -> go.Figure:
    """Histogram of one layer's weights before and after, with the quantization grid as lines."""
    figure = go.Figure()
    figure.add_histogram(x=list(before), name="original", opacity=0.6, nbinsx=120, marker_color=_color(0))
    figure.add_histogram(x=list(after), name="compressed", opacity=0.6, nbinsx=120, marker_color=_color(1))
    for level in grid:
        figure.add_vline(x=float(level), line_width=1, line_dash="dot", line_color="#888")
    figure.update_layout(title=f"Weights of {layer} before and after (dotted: quantization grid of its first group)",
                         barmode="overlay", xaxis_title="weight value", yaxis_title="count")
    return figure


def _quality_axis(table: pd.DataFrame) -> tuple[str, str]:
    metric, higher = QUALITY_METRIC[table["kind"].iloc[0]]
    return metric, f"{metric.replace('_', ' ')} ({'higher' if higher else 'lower'} is better)"


def tradeoff_memory(table: pd.DataFrame, group_by: str = "prune_method") -> go.Figure:
    """Quality against stored memory: one line per ``group_by`` value, the Pareto front highlighted."""
    metric, label = _quality_axis(table)
    figure = go.Figure()
    hover = [c for c in ("setting", metric, "stored_bytes", "bits_per_weight", "sparsity", "x_smaller") if c in table]
    for index, (name, part) in enumerate(table.groupby(group_by, sort=False)):
        part = part.sort_values("stored_bytes")
        figure.add_scatter(x=part["stored_bytes"] / GIB, y=part[metric], mode="lines+markers", name=str(name),
                           marker_color=_color(index), customdata=part[hover],
                           hovertemplate="<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(hover))
                           + "<extra></extra>")
    if "pareto" in table:
        front = table[table["pareto"]].sort_values("stored_bytes")
        figure.add_scatter(x=front["stored_bytes"] / GIB, y=front[metric], mode="lines+markers", name="Pareto front",
                           line=dict(color="black", dash="dash"), marker=dict(symbol="star", size=12, color="gold"),
                           text=front["setting"], hovertemplate="%{text}<extra>Pareto</extra>")
    log_y = metric == "perplexity" and table[metric].replace(float("inf"), None).dropna().max() > 100
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against stored memory",
                         xaxis_title="stored model size (GiB)", yaxis_title=label, yaxis_type="log" if log_y else "linear")
    return figure


def quality_vs_bits(table: pd.DataFrame) -> go.Figure:
    """Quality against bit width, one line per prune ratio."""
    metric, label = _quality_axis(table)
    figure = go.Figure()
    for index, (ratio, part) in enumerate(table.groupby("prune_ratio", sort=True)):
        part = part.sort_values("bits")
        figure.add_scatter(x=part["bits"], y=part[metric], mode="lines+markers", name=f"pruned {ratio:.0%}",
                           marker_color=_color(index), text=part["setting"],
                           hovertemplate="%{text}<br>%{y:.4g}<extra></extra>")
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against bit width", xaxis_title="bits",
                         yaxis_title=label, xaxis=dict(tickmode="array", tickvals=sorted(table["bits"].unique())))
    return figure


def ratio_bits_heatmap(table: pd.DataFrame) -> go.Figure:
    """Prune ratio x bit width heatmap of the quality metric (mean over other axes)."""
    metric, label = _quality_axis(table)
    grid = table.pivot_table(index="prune_ratio", columns="bits", values=metric, aggfunc="mean")
    figure = go.Figure(go.Heatmap(z=grid.values, x=[str(b) for b in grid.columns],
                                  y=[f"{r:.0%}" for r in grid.index], colorscale="Viridis",
                                  colorbar_title=metric, hovertemplate="bits %{x}, pruned %{y}: %{z:.4g}<extra></extra>"))
    figure.update_layout(title=f"{label.capitalize()} by prune ratio and bit width", xaxis_title="bits",
                         yaxis_title="prune ratio")
    return figure


def layer_heatmap(layers: Sequence[dict[str, Any]], value: str = "sqnr_db") -> go.Figure:
    """Block x module-type heatmap of a per-layer value (SQNR in dB, sparsity ...)."""
    frame = _layer_frame(layers)
    grid = frame.pivot_table(index="module_type", columns="block_label", values=value, aggfunc="first", sort=False)
    figure = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index),
                                  colorscale="RdYlGn" if value == "sqnr_db" else "Blues",
                                  colorbar_title=value, hovertemplate="%{y} in %{x}: %{z:.3g}<extra></extra>"))
    title = "Quantization error per layer: SQNR in dB (lower = more damage)" if value == "sqnr_db" \
        else f"{value.replace('_', ' ').capitalize()} per layer"
    figure.update_layout(title=title, xaxis_title="block", yaxis_title="module")
    return figure


def memory_stack(estimate: dict[str, Any]) -> go.Figure:
    """Stacked bar of weights / KV cache / activations from a planner estimate's ``to_dict()``."""
    figure = go.Figure()
    for index, (key, name) in enumerate((("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache"),
                                         ("activation_bytes", "activations (rough)"))):
        figure.add_bar(x=["estimate"], y=[estimate[key] / GIB], name=name, marker_color=_color(index),
                       hovertemplate=f"{name}: %{{y:.2f}} GiB<extra></extra>")
    figure.update_layout(title=f"Estimated memory: {estimate['total_bytes'] / GIB:.2f} GiB in all", barmode="stack",
                         yaxis_title="GiB")
    return figure
