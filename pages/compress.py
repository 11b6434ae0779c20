"""Compress: one setting on one model, compared with the original."""
import streamlit as st

from memopt_core.config import RunConfig
from ui.compress_run import drive, live_controls, show, to_show
from ui.compress_settings import setting_columns
from ui.model_settings import model_and_evaluation

st.title("Compress")
st.caption("Prune and quantize a copy of a model, then compare it with the original: quality, memory, "
           "layer by layer. The original is never changed.")

config = None
spec, evaluation = model_and_evaluation()
prune, quant = setting_columns(spec, explain=True)

if spec is not None and evaluation is not None:
    config = RunConfig(model=spec, prune=prune, quant=quant, eval=evaluation)
live, target_ci = live_controls(spec)
clicked = not live and st.button("Run", type="primary", key="compress.run", disabled=config is None,
                                 icon=":material/play_arrow:")
drive(config, live, target_ci, clicked)

shown = to_show(config)
if shown is not None:
    show(shown)
