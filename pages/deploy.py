"""Deploy: ship a setting to a serving engine (GGUF, compressed-tensors, ONNX) and prove the file."""
import streamlit as st

from ui import deploy_view
from ui.compress_settings import prune_settings, quant_settings
from ui.errors import user_errors
from ui.model_settings import model_and_evaluation

st.title("Deploy")
st.caption("Write what you explored in a format a serving engine loads, then load it back with that "
           "format's own reader and measure it on the same windows. Where a setting has no type in the "
           "format, the table says what it becomes.")

spec, evaluation = model_and_evaluation()
config = saved = None
fmt, type_name, usable = "gguf", None, False

what, target = st.columns(2)
with what:
    st.subheader("What to ship")
    origin = st.radio("From", ["setting", "saved"], horizontal=True, key="deploy.origin", persist_state="session",
                      format_func={"setting": "a setting (shared with Compress)", "saved": "a saved model"}.get)
    if origin == "saved":
        saved = deploy_view.saved_choice()
    else:
        with user_errors("setting"):
            with st.expander("Setting", expanded=False):
                prune, quant = prune_settings(), quant_settings()
            config = deploy_view.current_setting(spec, evaluation, prune, quant)
with target:
    st.subheader("Where to run it")
    fmt, type_name, usable = deploy_view.target_widgets()
    verify = st.checkbox("Load it back and measure it (round trip)", value=True, key="deploy.verify",
                         persist_state="session")
    with user_errors("type"):
        config = deploy_view.typed_setting(fmt, type_name, config) if usable else config

ready = usable and (saved is not None or config is not None) and evaluation is not None
plan_column, export_column = st.columns(2)
if plan_column.button("Plan", key="deploy.plan_button", disabled=not ready or saved is not None,
                      icon=":material/table_view:", help="What each layer becomes (compresses, no evaluation)"):
    deploy_view.show_plan(config, fmt, type_name)
if export_column.button("Export", type="primary", key="deploy.export", disabled=not ready,
                        icon=":material/rocket_launch:"):
    deploy_view.run_export(config, saved, evaluation, fmt, type_name, verify)

if st.session_state.get(deploy_view.PLAN):
    st.divider()
    st.subheader("What the format holds")
    deploy_view.show_plan_result(st.session_state[deploy_view.PLAN])
if st.session_state.get(deploy_view.REPORT):
    st.divider()
    report = st.session_state[deploy_view.REPORT]
    st.subheader(f"Exported: {report['format']} {report['type']}")
    st.caption(f"`{report['folder']}`")
    deploy_view.show_report(report)

st.divider()
st.subheader("Engines x settings: which can run what")
deploy_view.show_support_table()
