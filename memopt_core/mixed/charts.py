"""Sensitivity rankings and mixed-precision plans -> plotly figures. Pure (no Streamlit).

Inputs are the JSON forms the engine returns: ``SensitivityResult.to_dict()`` and
``MixedPrecisionPlan.to_dict()`` (the CLI's ``--json`` objects), so a chart can be drawn from a
saved file as well as from a live result.
"""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from memopt_core.charts import series_color
from memopt_core.compression.walk import layer_position

_BITS_COLORS = {2: "#E45756", 3: "#F58518", 4: "#4C78A8", 5: "#72B7B2", 6: "#54A24B", 8: "#2E7D32"}


def loss_name(result: dict[str, Any]) -> str:
    """Which per-unit figure the ranking chart plots: KL (causal LMs) or the metric's change."""
    if result["rows"] and all(row.get("kl") is not None for row in result["rows"]):
        return "kl"
    return "delta"


def _unit_type(unit: str, by: str) -> str:
    """'self_attn.q_proj' for a layer, 'block' for a block (one colour)."""
    return layer_position(unit)[1] if by == "layer" else "block"


def sensitivity_bars(result: dict[str, Any], top: int | None = None) -> go.Figure:
    """Horizontal bars, most sensitive unit on top: the loss when only that unit is compressed.

    Plots the KL to the original for causal LMs (never negative, steadier than the NLL change
    on a small budget), the cosine drop for encoders; hover shows both figures and the size."""
    key = loss_name(result)
    rows = sorted(result["rows"], key=lambda row: row[key] if row[key] is not None else 0.0, reverse=True)
    rows = rows[:top] if top else rows
    types = list(dict.fromkeys(_unit_type(row["unit"], result["by"]) for row in rows))
    figure = go.Figure()
    for index, kind in enumerate(types):
        part = [row for row in rows if _unit_type(row["unit"], result["by"]) == kind]
        figure.add_bar(y=[row["unit"] for row in part], x=[row[key] for row in part], orientation="h", name=kind,
                       marker_color=series_color(index),
                       customdata=[[row["delta"], row["kl"] if row["kl"] is not None else float("nan"),
                                    row["params"]] for row in part],
                       hovertemplate="%{y}<br>metric change %{customdata[0]:+.5f}<br>KL %{customdata[1]:.5f}"
                                     "<br>%{customdata[2]:,} weights<extra></extra>")
    axis = "KL to the original (nats per token)" if key == "kl" else (
        "NLL increase (nats per token)" if result["metric"] == "nll" else "drop of cosine similarity")
    figure.update_layout(title=f"Sensitivity: {result['setting']} applied to one {result['by']} at a time",
                         xaxis_title=axis, barmode="overlay", height=max(320, 18 * len(rows) + 120),
                         yaxis={"categoryorder": "array", "categoryarray": [row["unit"] for row in rows][::-1]})
    return figure


def plan_bits_chart(plan: dict[str, Any]) -> go.Figure:
    """One bar per unit in model order, its height the planned bit width, coloured by width."""
    units = list(plan["unit_bits"])
    figure = go.Figure()
    for bits in sorted(set(plan["unit_bits"].values())):
        chosen = [unit for unit in units if plan["unit_bits"][unit] == bits]
        figure.add_bar(x=chosen, y=[bits] * len(chosen), name=f"{bits} bits",
                       marker_color=_BITS_COLORS.get(bits, "#BAB0AC"),
                       hovertemplate="%{x}: %{y} bits<extra></extra>")
    figure.update_layout(title=f"Mixed-precision plan: {plan['bits_per_weight']:.3f} stored bits per weight "
                               f"(budget {plan['budget_bpw']:.3f})", yaxis_title="bits", barmode="overlay",
                         xaxis={"categoryorder": "array", "categoryarray": units, "showticklabels": len(units) <= 40})
    return figure
