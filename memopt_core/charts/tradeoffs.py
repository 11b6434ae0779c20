"""Sweep charts: quality against stored memory (with the Pareto front), against bits, and the ratio heatmap."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memopt_core.charts.common import finite, hover_data, quality_axis, quality_yaxis, series_color, with_hover_columns
from memopt_core.units import GIB


def tradeoff_memory(table: pd.DataFrame, group_by: str = "pruning") -> go.Figure:
    """Quality against stored memory: one line per ``group_by`` value (default: the pruning
    setting, e.g. 'magnitude 50%'; 'sweep' to overlay sweeps), the Pareto front highlighted.

    Hovering a point shows every figure of its row (quality metrics, sizes, bits, sparsity)."""
    metric, label = quality_axis(table)
    table = with_hover_columns(table)
    if group_by == "pruning" and "pruning" not in table:
        # Unpruned first, then by ratio: the same colour per pruning setting as in quality_vs_bits.
        table = table.assign(pruning=table.apply(_line_label, axis=1))
        table = table.sort_values(["prune_ratio", "pruning"], kind="stable")
    figure = go.Figure()
    # A pruning setting's points form a curve (more bits, more bytes); a sweep's points are a cloud.
    mode = "lines+markers" if group_by == "pruning" else "markers"
    for index, (name, part) in enumerate(table.groupby(group_by, sort=False, dropna=False)):
        part = part.sort_values("stored_bytes")
        customdata, template = hover_data(part)
        figure.add_scatter(x=part["stored_bytes"] / GIB, y=finite(part[metric]), mode=mode,
                           name=str(name), marker_color=series_color(index), customdata=customdata,
                           hovertemplate=template)
    if "pareto" in table:
        front = table[table["pareto"].astype(bool)].sort_values("stored_bytes")
        customdata, template = hover_data(front)
        figure.add_scatter(x=front["stored_bytes"] / GIB, y=finite(front[metric]), mode="lines+markers",
                           name="Pareto front", line=dict(color="black", dash="dash"),
                           marker=dict(symbol="star", size=12, color="gold"), customdata=customdata,
                           hovertemplate=template.replace("<extra></extra>", "<extra>Pareto</extra>"))
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against stored memory",
                         xaxis_title="stored model size (GiB)", yaxis=quality_yaxis(table, metric, label),
                         hoverlabel=dict(align="left"))
    return figure



CALIBRATED_QUANTIZERS = {"gptq": "GPTQ"}



def _line_label(row: pd.Series) -> str:
    """The pruning setting, plus the quantizer when it is a calibrated one (RTN is the default) and
    the recovery when there was one: 'magnitude 50%', 'wanda 2:4 · GPTQ', 'not pruned + recovery 150
    steps' (recovered points get their own line beside the unrecovered ones)."""
    label = "not pruned"
    if row.get("prune_method", "none") != "none":
        pattern = row.get("prune_pattern", "unstructured")
        amount = pattern if pattern != "unstructured" else f"{row['prune_ratio']:.0%}"
        label = f"{row['prune_method']} {amount}"
    quantizer = CALIBRATED_QUANTIZERS.get(row.get("quant_method"))
    label = f"{label} · {quantizer}" if quantizer else label
    steps = row.get("recovery_steps")
    return label if steps is None or pd.isna(steps) else f"{label} + recovery {int(steps)} steps"



def _grain_label(row: pd.Series) -> str:
    group = row.get("group_size")
    return "per-channel" if group is None or pd.isna(group) else f"g{int(group)}"



_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")



def _bits_lines(frame: pd.DataFrame) -> list[tuple[str, str | None, pd.DataFrame]]:
    """(pruning, group size or None, rows) of each line: one per pruning setting and, when several
    were run, group size. Unquantized (16-bit) points carry no group size, so they join every line
    of their pruning."""
    quantized, dense = frame[frame["bits"] < 16], frame[frame["bits"] >= 16]
    if quantized["grain"].nunique() <= 1:
        return [(label, None, part) for label, part in frame.groupby("prune_label", sort=False)]
    lines = []
    for (label, grain), part in quantized.groupby(["prune_label", "grain"], sort=False):
        lines.append((label, grain, pd.concat([part, dense[dense["prune_label"] == label]])))
    unquantized_only = dense[~dense["prune_label"].isin(quantized["prune_label"])]
    for label, part in unquantized_only.groupby("prune_label", sort=False):
        lines.append((label, None, part))
    return lines



def quality_vs_bits(table: pd.DataFrame) -> go.Figure:
    """Quality against bit width: one line per pruning setting (colour) and, when several were
    run, group size (dash)."""
    metric, label = quality_axis(table)
    frame = table.assign(prune_label=table.apply(_line_label, axis=1), grain=table.apply(_grain_label, axis=1))
    frame = frame.sort_values(["prune_ratio", "prune_label"], kind="stable")  # unpruned first, as elsewhere
    colours = {name: series_color(i) for i, name in enumerate(dict.fromkeys(frame["prune_label"]))}
    grains = sorted(set(frame.loc[frame["bits"] < 16, "grain"]), key=_grain_order)
    dashes = {name: _DASHES[i % len(_DASHES)] for i, name in enumerate(grains)}
    figure = go.Figure()
    for pruning, grain, part in _bits_lines(frame):
        part = part.sort_values("bits")
        figure.add_scatter(x=part["bits"], y=finite(part[metric]), mode="lines+markers",
                           name=pruning if grain is None else f"{pruning}, {grain}", marker_color=colours[pruning],
                           line=dict(dash=dashes.get(grain, "solid")), text=part["setting"],
                           hovertemplate="%{text}<br>" + metric.replace("_", " ") + " %{y:.4g}<extra></extra>")
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against bit width",
                         yaxis=quality_yaxis(table, metric, label),
                         xaxis=dict(title="bits", tickmode="array", tickvals=sorted(table["bits"].unique())))
    return figure



def _grain_order(grain: str) -> int:
    return int(grain[1:]) if grain.startswith("g") else 0



def ratio_bits_heatmap(table: pd.DataFrame) -> go.Figure:
    """Pruning setting x bit width heatmap of the quality metric (mean over other axes, such as
    group size). Perplexity is coloured on a log scale; diverged cells are left blank."""
    metric, label = quality_axis(table)
    frame = table.assign(prune_label=table.apply(_line_label, axis=1),
                         value=finite(table[metric]), order=table["prune_ratio"])
    grid = frame.pivot_table(index="prune_label", columns="bits", values="value", aggfunc="mean", dropna=False)
    grid = grid.loc[frame.groupby("prune_label")["order"].first().sort_values().index]
    z = grid.to_numpy(dtype=float)
    log_colour = metric == "perplexity"
    colour = np.log10(z) if log_colour else z
    text = [["" if np.isnan(v) else f"{v:.4g}" for v in row] for row in z]
    figure = go.Figure(go.Heatmap(z=colour, x=[str(b) for b in grid.columns], y=list(grid.index),
                                  customdata=z, text=text, texttemplate="%{text}",
                                  colorscale="Viridis_r" if log_colour else "Viridis",
                                  colorbar_title=f"log10 {metric}" if log_colour else metric,
                                  hovertemplate="bits %{x}, %{y}: " + metric + " %{customdata:.4g}<extra></extra>"))
    figure.update_layout(title=f"{label.capitalize()} by pruning and bit width", yaxis_title="pruning",
                         xaxis=dict(title="bits", type="category"))  # '4', '8', '16' are labels, not a scale
    return figure
