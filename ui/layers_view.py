"""The Layers page's parts: pick a result (this session's last run or any stored run), show its
per-layer heatmaps and table."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from memopt_core import charts
from ui.chart_glue import saving_phrase, show_chart
from ui.compress_run import RESULT
from ui.loaders import result_store
from ui.result_view import setting_of

CURRENT = "current"


def _stored_label(row: dict) -> str:
    when = dt.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
    sweep = f" · sweep {row['sweep']}" if row["sweep"] else ""
    return f"{row['model']} · {row['setting']} · {when}{sweep}"


def choose_result() -> dict | None:
    """A selectbox over this session's Compress result and the stored runs; the chosen result dict."""
    options: dict[str, tuple[str, dict]] = {}
    current = st.session_state.get(RESULT)
    if current is not None:
        result = current["result"]
        options[CURRENT] = (f"Last Compress result: {result['model']['name']} · {setting_of(result)}", result)
    for row in result_store().rows():
        if current is None or row["key"] != current["key"]:
            options[row["key"]] = (_stored_label(row), row["result"])
    if not options:
        return None
    choice = st.selectbox("Result", list(options), format_func=lambda k: options[k][0], key="layers.choice")
    return options[choice][1]


def layer_table(layers: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(layers)
    frame["shape"] = frame["shape"].map(lambda s: " x ".join(map(str, s)))
    columns = ["name", "shape", "layout", "sparsity", "bits", "sqnr_db", "dense_bytes", "stored_bytes"]
    if "layout" in frame and frame["layout"].isna().all():  # integer grids and casts: no format layout to show
        frame = frame.drop(columns="layout")
    return frame[[c for c in columns if c in frame]]


def show_layers(result: dict) -> None:
    layers = result["layers"]
    st.subheader(f"{result['model']['label']}: {setting_of(result)}")
    phrase = saving_phrase(result)
    show_chart(charts.layer_heatmap(layers, "sparsity"), "Share of exact zeros in each layer (rows: module type, "
               f"columns: block); {phrase}.", key="layers.sparsity")
    show_chart(charts.layer_heatmap(layers, "sqnr_db"), "Signal-to-noise ratio of each layer's compressed weight "
               "against the original, in dB (10 dB = error a tenth of the weight's energy; 'exact' = no error); "
               f"{phrase}.", key="layers.sqnr")
    show_chart(charts.layer_heatmap(layers, "bits"), "Bits each layer stores per weight, scales, zero points and "
               f"masks included; {phrase}.", key="layers.bits")
    st.dataframe(layer_table(layers), hide_index=True,
                 column_config={"sparsity": st.column_config.NumberColumn(format="percent"),
                                "sqnr_db": st.column_config.NumberColumn("SQNR (dB)", format="%.2f"),
                                "bits": st.column_config.NumberColumn("bits/weight", format="%.3f"),
                                "layout": st.column_config.TextColumn(
                                    "stored as", help="A format's layout; a k-quant on rows that are not a "
                                                      "multiple of 256 falls back to a block-of-32 type, as "
                                                      "llama.cpp does")})
