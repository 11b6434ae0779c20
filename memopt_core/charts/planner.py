"""The memory planner's stacked estimate."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from memopt_core.charts.common import series_color
from memopt_core.units import GIB


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
