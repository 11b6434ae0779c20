"""Compress: one setting on one model, compared with the original."""
import streamlit as st

from memopt_core.config import RunConfig
from ui import result_view
from ui.compress_run import result_to_show, run_setting, save_button
from ui.compress_settings import prune_settings, quant_settings
from ui.errors import user_errors
from ui.methods import explain_prune, explain_quant
from ui.model_settings import model_and_evaluation
from ui.weights_view import show_weight_view

st.title("Compress")
st.caption("Prune and quantize a copy of a model, then compare it with the original: quality, memory, "
           "layer by layer. The original is never changed.")

prune = quant = config = None
spec, evaluation = model_and_evaluation()

prune_column, quant_column = st.columns(2)
with prune_column:
    st.subheader("Prune")
    with user_errors("pruning"):
        prune = prune_settings()
        explain_prune(prune)
with quant_column:
    st.subheader("Quantize")
    with user_errors("quantization"):
        quant = quant_settings()
        explain_quant(quant, spec)

if spec is not None and evaluation is not None:
    config = RunConfig(model=spec, prune=prune, quant=quant, eval=evaluation)
if st.button("Run", type="primary", key="compress.run", disabled=config is None, icon=":material/play_arrow:"):
    run_setting(config)

shown = result_to_show(config)
if shown is not None:
    result = shown["result"]
    st.divider()
    origin = " · from the results store" if shown["from_store"] else ""
    st.header(f"{result['model']['label']}: {result_view.setting_of(result)}{origin}")
    result_view.show_notes(result)
    result_view.show_quality(result)
    result_view.show_memory(result)
    result_view.show_layer_charts(result, key="compress")
    show_weight_view(result, key="compress")
    result_view.show_generation(result)
    result_view.show_protocol(result)
    save_button(shown)
