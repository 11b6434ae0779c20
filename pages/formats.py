"""Formats: the number formats deployed today on one model, at their natural bits per weight."""
import streamlit as st

from ui.errors import user_errors
from ui.formats_view import RESULT, chosen_settings, run_comparison, show_comparison
from ui.model_settings import model_and_evaluation
from ui.rotation_view import show_rotation_lesson

st.title("Formats")
st.caption("NF4, FP8, MXFP4/NVFP4, llama.cpp's k-quants and integer grids on the same model and the same "
           "windows, each at the bits it is deployed with: quality against stored bits per weight, the Pareto "
           "front, and per-layer error side by side. Results go to the results store.")

spec, evaluation = model_and_evaluation()
quants = []
with user_errors("formats"):
    quants = chosen_settings()
ready = spec is not None and evaluation is not None and bool(quants)
if st.button("Compare", type="primary", key="formats.run", disabled=not ready, icon=":material/play_arrow:"):
    with user_errors("comparison"):
        run_comparison(spec, evaluation, quants)

state = st.session_state.get(RESULT)
if state is not None:
    st.divider()
    show_comparison(state)
st.divider()
show_rotation_lesson(spec)
