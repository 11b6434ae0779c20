"""The Formats page's parts: which formats to compare, the run, the chart with the Pareto front,
per-layer error of two formats side by side, and the rotation lesson."""
from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import streamlit as st

from memopt_core.charts import formats as format_charts
from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.runs.format_presets import ROTATION_PAIRS, by_label
from memopt_core.runs.sweep import run_settings
from ui.chart_glue import show_chart
from ui.loaders import loader, peek_stored, result_store
from ui.sweep_view import display_table
from ui.vocabulary import KEEP


RESULT = "formats.result"  # {"table", "configs", "spec", "evaluation"}
DEFAULT = ("W4A16 g32 sym", "W4A16 g64 sym", "NF4 b64", "NF4 b64 dq", "MXFP4 b32", "NVFP4 b16", "Q4_K",
           "FP8-E4M3 per-channel")


def chosen_settings(where=st) -> list[QuantConfig]:
    """A multiselect of the formats (at their natural bits) and a toggle for rotated twins."""
    options = by_label()
    labels = where.multiselect("Formats", list(options), default=list(DEFAULT), key="formats.choice",
                               persist_state=KEEP, help="Each at the bits and blocks it is deployed with; the "
                                                        "integer grids are memopt's RTN.")
    chosen = [options[label] for label in labels]
    if where.toggle("Add rotated twins of the integer grids (randomized Hadamard)", key="formats.rotate",
                    persist_state=KEEP):
        twins = [dataclasses.replace(q, rotate="hadamard") for q in chosen if q.format == "int"]
        chosen += twins or [dataclasses.replace(q, rotate="hadamard") for q in ROTATION_PAIRS[:2]]
    return chosen


def run_comparison(spec: ModelSpec, evaluation: EvalConfig, quants: list[QuantConfig]) -> None:
    bar = st.progress(0.0, text="Starting ...")

    def progress(done: int, total: int, label: str, seconds_left: float | None) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{done} of {total} done · now: {label}")

    result = run_settings(spec, [(None, q) for q in quants], evaluation, store=result_store(), progress=progress,
                          sweep_name=f"{spec.source} formats", load=loader())
    st.session_state[RESULT] = {"table": result.table, "configs": quants, "spec": spec, "evaluation": evaluation}


def _layers_of(state: dict[str, Any], quant: QuantConfig) -> list[dict] | None:
    stored = peek_stored(RunConfig(state["spec"], quant=quant, eval=state["evaluation"]))
    return None if stored is None else stored["layers"]


def _fallbacks(layers: list[dict], fmt: str) -> str:
    fell = pd.Series([l.get("layout") for l in layers]).value_counts()
    other = {k: v for k, v in fell.items() if k and k != fmt}
    return ", ".join(f"{v} layers as {k.upper()}" for k, v in other.items())


def show_comparison(state: dict[str, Any]) -> None:
    table = state["table"]
    if table.empty:
        return
    show_chart(format_charts.format_tradeoff(table),
               "Quality against the stored bits per weight of the targeted layers (codes and every scale, minimum "
               "and sign byte counted; all packed, so the saving is real). The dashed line is the Pareto front: "
               "no format left of it is better.", key="formats.tradeoff")
    st.dataframe(display_table(table), hide_index=True)
    notes = [f"{q.label}: {_fallbacks(layers, q.format)}" for q in state["configs"]
             if q.format.startswith("q") and (layers := _layers_of(state, q)) and _fallbacks(layers, q.format)]
    if notes:
        st.caption("k-quant fallbacks (rows not a multiple of 256, as llama.cpp does): " + "; ".join(notes) + ".")
    st.subheader("Per-layer error, two formats side by side")
    labels = [q.label for q in state["configs"]]
    left, right = st.columns(2)
    first = left.selectbox("Format A", labels, index=0, key="formats.a")
    second = right.selectbox("Format B", labels, index=min(1, len(labels) - 1), key="formats.b")
    configs = {q.label: q for q in state["configs"]}
    layers_a, layers_b = _layers_of(state, configs[first]), _layers_of(state, configs[second])
    if layers_a and layers_b:
        show_chart(format_charts.layer_error_pair(layers_a, layers_b, first, second),
                   "SQNR of each layer's stored weight against the original (dB; +10 dB = 10x less error energy); "
                   "right: where B keeps a layer closer than A (blue) or further (red).", key="formats.pair")
