"""Runs: every stored result, past sweeps overlaid, downloads, saved compressed models."""
import streamlit as st

from ui.errors import user_errors
from ui.loaders import result_store
from ui.runs_view import SINGLE, filters, show_runs, show_saved, store_table

st.title("Runs")
st.caption("Every finished run is kept in the results store under the memopt cache folder; settings "
           "already there answer at once on the Compress and Trade-offs pages.")

with user_errors("results store"):
    store = result_store()
    models = store.models()
    if not models:
        st.info("The results store is empty: run a setting on Compress or a sweep on Trade-offs.")
    else:
        model, sweeps = filters(models)
        rows = store.rows(model=model)
        if sweeps is not None:
            rows = [row for row in rows if (row["sweep"] or SINGLE) in sweeps]
        st.caption(f"{len(rows)} runs of {model} in `{store.path}`")
        if rows:
            show_runs(store_table(rows), rows)
with user_errors("saved models"):
    show_saved()
