"""Sensitivity: which layers can take compression, and a mixed-precision plan built from that."""
import streamlit as st

from ui.errors import user_errors
from ui.methods import explain_sensitivity
from ui.model_settings import model_and_evaluation
from ui.sensitivity_view import PLAN, RANKING, measure, plan, show_plan, show_ranking, unit_settings

st.title("Sensitivity")
st.caption("Compress one layer (or block) at a time and measure what the model loses: a ranking of where "
           "compression hurts. Then let that ranking choose a bit width per unit under a memory budget, and "
           "measure the plan against uniform quantization.")

settings = None
spec, evaluation = model_and_evaluation()
with user_errors("settings"):
    settings = unit_settings()
explain_sensitivity()
ready = spec is not None and evaluation is not None and settings is not None

if st.button("Measure sensitivity", type="primary", key="sens.measure", disabled=not ready,
             icon=":material/play_arrow:"):
    with user_errors("sensitivity"):
        quant, prune, by, tokens = settings
        measure(spec, evaluation, quant, prune, by, tokens)
if RANKING in st.session_state:
    show_ranking(st.session_state[RANKING])

st.divider()
st.header("Mixed-precision plan")
budget = st.slider("Budget: stored bits per weight of the targeted layers", 2.1, 8.0, 4.0, 0.05,
                   key="sens.budget", persist_state="session",
                   help="The plan picks 2, 3, 4, 5, 6 or 8 bits per unit (at the settings above) so that the average, "
                        "fp16 scales included, stays within this. Uniform 4-bit per-channel takes about 4.03.")
if st.button("Plan, apply and measure", key="sens.plan_run", disabled=not ready, icon=":material/tune:"):
    with user_errors("mixed precision"):
        quant, _, by, tokens = settings
        plan(spec, evaluation, quant, budget, by, tokens)
if PLAN in st.session_state:
    show_plan(st.session_state[PLAN])
