"""Result objects -> plotly figures. Pure (no Streamlit): testable on the figure's data.

Every figure's title says what it shows; callers add the one-line caption about whether the
memory saving is real (packed storage) or simulated (fake quantization, masks held dense).
Infinite values (an exact reconstruction has SQNR +inf dB, a diverged model perplexity +inf)
are drawn as gaps and named in the hover text: JSON and colour scales cannot hold infinity.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memopt_core.runs.rows import QUALITY_METRIC
from memopt_core.units import GIB

_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
MAX_GRID_LINES = 64  # a 6-bit grid; finer grids would hide the histogram behind their lines
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


def _layer_frame(layers: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(layers))
    frame["block_label"] = frame["block"].map(lambda b: "-" if pd.isna(b) else f"block {int(b)}")
    return frame


def sparsity_by_layer(layers: Sequence[dict[str, Any]]) -> go.Figure:
    """One bar per targeted layer: x is the block, one bar (and colour) per module type in it."""
    frame = _layer_frame(layers)
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
    frame = _layer_frame(layers)
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
                     layer: str = "", bins: int = 120) -> go.Figure:
    """Histogram of one layer's weights before and after (shared bins, so the bars line up), with
    the quantization grid of its first group as dotted lines and a marker trace at zero height.

    Counts are computed here (numpy), so the figure carries ``bins`` numbers per trace instead of
    every weight. The axis spans the central 99.8% of the original weights (and the grid, when it
    is not far wider); values beyond are counted in the end bins, so every weight is in a bar.
    Grids finer than :data:`MAX_GRID_LINES` levels are drawn as markers only."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    low, high = _histogram_range(before, np.asarray(grid, dtype=float))
    edges = np.linspace(low, high, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    figure = go.Figure()
    for index, (name, data) in enumerate((("original", before), ("compressed", after))):
        counts, _ = np.histogram(np.clip(data, low, high), bins=edges)
        figure.add_bar(x=centres, y=counts, width=width, name=name, opacity=0.6, marker_color=series_color(index),
                       hovertemplate=f"{name}: %{{y:,}} weights near %{{x:.4g}}<extra></extra>")
    if len(grid):
        figure.add_scatter(x=list(map(float, grid)), y=[0] * len(grid), mode="markers", name="quantization grid",
                           marker=dict(symbol="line-ns-open", size=14, color="#444"),
                           hovertemplate="grid level %{x:.4g}<extra></extra>")
        if len(grid) <= MAX_GRID_LINES:
            for level in grid:
                figure.add_vline(x=float(level), line_width=1, line_dash="dot", line_color="#888")
    figure.update_layout(title=f"Weights of {layer} before and after (dotted: quantization grid of its first group)",
                         barmode="overlay", bargap=0, xaxis_title="weight value", yaxis_title="count")
    return figure


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


def _quality_axis(table: pd.DataFrame) -> tuple[str, str]:
    metric, higher = QUALITY_METRIC[table["kind"].iloc[0]]
    return metric, f"{metric.replace('_', ' ')} ({'higher' if higher else 'lower'} is better)"


def _with_hover_columns(table: pd.DataFrame) -> pd.DataFrame:
    extra = {}
    if "stored_bytes" in table:
        extra["stored_mib"] = table["stored_bytes"].astype(float) / 2**20
    if "measured_bytes" in table:
        extra["measured_mib"] = pd.to_numeric(table["measured_bytes"], errors="coerce") / 2**20
    return table.assign(**extra)


def _format(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf (diverged)" if value > 0 else "-inf"
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def _hover(part: pd.DataFrame) -> tuple[list[list[str]], str]:
    """customdata (every figure the row has, formatted here so infinities read as words) and a
    template naming each figure."""
    shown = [(c, label, fmt) for c, label, fmt in _HOVER_FIGURES if c in part and part[c].notna().any()]
    data = [[_format(row[c], fmt) for c, _, fmt in shown] for _, row in part.iterrows()]
    lines = [f"{label}: %{{customdata[{i}]}}" for i, (_, label, _) in enumerate(shown)]
    return data, "<br>".join(lines) + "<extra></extra>"


def tradeoff_memory(table: pd.DataFrame, group_by: str = "pruning") -> go.Figure:
    """Quality against stored memory: one line per ``group_by`` value (default: the pruning
    setting, e.g. 'magnitude 50%'; 'sweep' to overlay sweeps), the Pareto front highlighted.

    Hovering a point shows every figure of its row (quality metrics, sizes, bits, sparsity)."""
    metric, label = _quality_axis(table)
    table = _with_hover_columns(table)
    if group_by == "pruning" and "pruning" not in table:
        # Unpruned first, then by ratio: the same colour per pruning setting as in quality_vs_bits.
        table = table.assign(pruning=table.apply(_line_label, axis=1))
        table = table.sort_values(["prune_ratio", "pruning"], kind="stable")
    figure = go.Figure()
    # A pruning setting's points form a curve (more bits, more bytes); a sweep's points are a cloud.
    mode = "lines+markers" if group_by == "pruning" else "markers"
    for index, (name, part) in enumerate(table.groupby(group_by, sort=False, dropna=False)):
        part = part.sort_values("stored_bytes")
        customdata, template = _hover(part)
        figure.add_scatter(x=part["stored_bytes"] / GIB, y=finite(part[metric]), mode=mode,
                           name=str(name), marker_color=series_color(index), customdata=customdata,
                           hovertemplate=template)
    if "pareto" in table:
        front = table[table["pareto"].astype(bool)].sort_values("stored_bytes")
        customdata, template = _hover(front)
        figure.add_scatter(x=front["stored_bytes"] / GIB, y=finite(front[metric]), mode="lines+markers",
                           name="Pareto front", line=dict(color="black", dash="dash"),
                           marker=dict(symbol="star", size=12, color="gold"), customdata=customdata,
                           hovertemplate=template.replace("<extra></extra>", "<extra>Pareto</extra>"))
    figure.update_layout(title=f"{metric.replace('_', ' ').capitalize()} against stored memory",
                         xaxis_title="stored model size (GiB)", yaxis=_quality_yaxis(table, metric, label),
                         hoverlabel=dict(align="left"))
    return figure


def _quality_yaxis(table: pd.DataFrame, metric: str, label: str) -> dict:
    """A log axis with round ticks for perplexities spanning more than 10x, else a linear one."""
    values = pd.Series(finite(table[metric]), dtype=float).dropna()
    if metric == "perplexity" and not values.empty and values.max() > 10 * max(values.min(), 1e-9):
        return dict(title=label, type="log", tickvals=log_ticks(values.min(), values.max()))
    return dict(title=label, type="linear")


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks covering [low, high] for a log axis (plotly's own show bare mantissas: '2', '5')."""
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    return inside or ticks


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
    metric, label = _quality_axis(table)
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
                         yaxis=_quality_yaxis(table, metric, label),
                         xaxis=dict(title="bits", tickmode="array", tickvals=sorted(table["bits"].unique())))
    return figure


def _grain_order(grain: str) -> int:
    return int(grain[1:]) if grain.startswith("g") else 0


def ratio_bits_heatmap(table: pd.DataFrame) -> go.Figure:
    """Pruning setting x bit width heatmap of the quality metric (mean over other axes, such as
    group size). Perplexity is coloured on a log scale; diverged cells are left blank."""
    metric, label = _quality_axis(table)
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


def layer_heatmap(layers: Sequence[dict[str, Any]], value: str = "sqnr_db") -> go.Figure:
    """Block x module-type heatmap of a per-layer value (SQNR in dB, sparsity ...).

    An exact reconstruction (SQNR +inf dB) shows as a blank cell marked 'exact'."""
    frame = _layer_frame(layers)
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


def memory_stack(estimate: dict[str, Any]) -> go.Figure:
    """Stacked bar of weights / KV cache / activations from a planner estimate's ``to_dict()``."""
    figure = go.Figure()
    for index, (key, name) in enumerate((("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache"),
                                         ("activation_bytes", "activations (rough)"))):
        figure.add_bar(x=["estimate"], y=[estimate[key] / GIB], name=name, marker_color=series_color(index),
                       hovertemplate=f"{name}: %{{y:.2f}} GiB<extra></extra>")
    figure.update_layout(title=f"Estimated memory: {estimate['total_bytes'] / GIB:.2f} GiB in all", barmode="stack",
                         yaxis_title="GiB")
    return figure
