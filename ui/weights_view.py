"""The teaching view: one layer's weights before and after, with the quantization grid."""
from __future__ import annotations

import streamlit as st

from memopt_core import charts
from memopt_core.config import RunConfig
from ui import loaders  # looked up at call time: tests replace the loader
from ui.chart_glue import saving_phrase, show_chart
from ui.errors import user_errors


def _caption(data, result: dict, quant) -> str:
    sample = f"{data.sampled:,} of the layer's {data.numel:,} weights" if data.sampled < data.numel \
        else f"all {data.numel:,} weights"
    if data.grid:
        what = f"{quant.bits}-bit codes" if quant.format == "int" else f"{quant.format_label} codes"
        grid = (f"the {len(data.grid)} values the first group's {what} can take are marked on the axis (dotted "
                "lines up to 64 values); every weight of that group is rounded to one of them")
    else:
        grid = "no quantization grid at this setting"
    extra = ""
    if data.rotated:
        before, after = data.absmax_to_rms
        extra = (f"; green: the rotated weights W Q the quantizer sees (its grid is that of W Q), rows' mean "
                 f"absmax/RMS {before:.2f} before rotation, {after:.2f} after")
    if data.clip:
        extra += f"; red dashed: the first group's range clipped by the {quant.range_method} criterion"
    return f"Histogram of {sample}, original and compressed; {grid}{extra}; {saving_phrase(result)}."


def show_weight_view(result: dict, key: str) -> None:
    """Pick a layer; its histogram is drawn when the original is loaded (or on request), so a
    result answered from the store never loads a model by itself."""
    st.subheader("Weights of one layer, before and after")
    config = RunConfig.from_dict(result["config"])
    names = [row["name"] for row in result["layers"]]
    layer = st.selectbox("Layer", names, key=f"{key}.layer")
    if not loaders.model_at_hand(config.model):
        st.caption("This view reads the original's weights; the model is not loaded now.")
        if not st.button("Load the model to show its weights", key=f"{key}.load_weights"):
            return
    with user_errors("weight view"):
        with st.spinner(f"Reading {layer} ..."):
            data = loaders.with_model(config.model, "memopt_core.compression.weight_view:layer_weights", config, layer)
        figure = charts.weight_histogram(data.before, data.after, data.grid, layer, rotated=data.rotated,
                                         clip=data.clip)
        low, high = figure.data[0].x[0], figure.data[0].x[-1]
        if data.grid and (min(data.grid) < low or max(data.grid) > high):
            st.caption("This group's grid is much wider than most weights (an outlier sets its range): "
                       "the axis shows the bulk of the weights and the grid levels inside it.")
        show_chart(figure, _caption(data, result, config.quant), key=f"{key}.histogram")
