"""Memory planner: what a model would take at a setting, from its config alone (no weights)."""
import streamlit as st

from memopt_core.planning import planner
from ui.errors import user_errors
from ui.planner_view import config_source, plan_settings, show_estimate

st.title("Memory planner")
st.caption("Estimate weights, KV cache and activations of any transformers model at a compression "
           "setting, from its config.json alone: instant, no weights are loaded.")

source = None
with user_errors("config"):
    source = config_source()
with user_errors("plan"):
    plan = plan_settings()
    if source is not None:
        config, name = source
        show_estimate(planner.estimate(config, plan).to_dict(), name)
