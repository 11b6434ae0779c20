"""The Runs page's parts: the results store as a filtered table, sweeps overlaid on the trade-off
chart, downloads, and the saved compressed models."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from memopt_core import charts
from memopt_core.runs.pareto import mark_pareto
from memopt_core.runs.rows import result_row
from ui.chart_glue import show_chart, table_saving_phrase
from ui.loaders import result_store
from ui.saved_models import list_saved, zip_folder

SINGLE = "(single runs)"
COLUMNS = ("created", "sweep", "setting", "evaluation", "perplexity", "kl_divergence", "top1_agreement",
           "cosine_similarity", "accuracy", "stored_mib", "bits_per_weight", "x_smaller", "sparsity", "simulated",
           "recovery")


def _evaluation(result: dict) -> str:
    evaluation = result["config"]["eval"]
    if result["model"]["kind"] != "causal-lm":
        return "labelled sentences"
    text = evaluation["text"] if evaluation["text"] in ("wikipedia", "news") else "uploaded text"
    return f"{text}, {evaluation['max_tokens']} tokens, window {evaluation['seq_len']}"


def store_table(rows: list[dict]) -> pd.DataFrame:
    """One flat row per stored run (``results.result_row``) plus when, which sweep, which evaluation."""
    records = []
    for row in rows:
        flat = result_row(row["result"], label=row["setting"], key=row["key"])
        # Recovered runs form their own group on the chart, beside the unrecovered ones.
        group = (row["sweep"] or SINGLE) + (" · recovered" if flat["recovery_steps"] is not None else "")
        flat.update(created=dt.datetime.fromtimestamp(row["created"]), sweep=group,
                    evaluation=_evaluation(row["result"]), stored_mib=flat["stored_bytes"] / 2**20)
        records.append(flat)
    return pd.DataFrame(records)


def filters(models: list[str]) -> tuple[str, list[str] | None]:
    left, right = st.columns(2)
    model = left.selectbox("Model", models, key="runs.model")
    sweeps = sorted({row["sweep"] or SINGLE for row in result_store().rows(model=model)})
    chosen = right.multiselect("Sweeps to show and overlay (all when empty)", sweeps, key="runs.sweeps")
    return model, chosen or None


def show_runs(table: pd.DataFrame, rows: list[dict]) -> None:
    shown = table[[c for c in COLUMNS if c in table]]
    st.dataframe(shown, hide_index=True, column_config={
        "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        "stored_mib": st.column_config.NumberColumn("stored (MiB)", format="%.2f"),
        "sparsity": st.column_config.NumberColumn(format="percent")})
    csv, raw = st.columns(2)
    csv.download_button("Download CSV", table.to_csv(index=False), file_name="memopt-runs.csv", mime="text/csv",
                        key="runs.csv", icon=":material/download:")
    raw.download_button("Download JSON (full results)", json.dumps([r["result"] for r in rows], default=str),
                        file_name="memopt-runs.json", mime="application/json", key="runs.json",
                        icon=":material/download:")
    if table["evaluation"].nunique() > 1:
        st.warning("These runs were measured with different evaluation settings; their quality figures are "
                   "only comparable within one evaluation.")
    figure = charts.tradeoff_memory(mark_pareto(table), group_by="sweep")
    show_chart(figure, "Quality against stored size, one line per sweep; stars mark the Pareto front of all "
               f"runs shown; {table_saving_phrase(table)}.", key="runs.tradeoff")


def show_saved() -> None:
    saved = list_saved()
    st.subheader("Saved compressed models")
    if not saved:
        st.caption("None yet: press 'Save compressed model' under a result on the Compress page.")
        return
    for index, entry in enumerate(saved):
        left, right = st.columns([4, 1])
        note = " · memory saving simulated (fake quantization)" if entry["simulated"] else ""
        left.markdown(f"**{entry['name']}** · {entry['base model']} · {entry['setting']} · "
                      f"{entry['size_mib']:.1f} MiB on disk{note}")
        right.download_button("Download zip", data=lambda path=entry["path"]: zip_folder(path),
                              file_name=f"{Path(entry['path']).name}.zip", mime="application/zip",
                              key=f"runs.saved.{index}", icon=":material/download:")
