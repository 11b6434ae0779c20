"""Recovery: fine-tune a compressed copy by distillation from the original, with a live curve."""
import streamlit as st

from memopt_core.config import RunConfig
from memopt_core.recovery.config import check_recoverable
from ui.compress_settings import setting_columns
from ui.errors import user_errors
from ui.model_settings import model_and_evaluation
from ui.recovery_view import JOB, recovery_settings, show_job, show_stored, start

st.title("Recovery")
st.caption("Compression loses quality; a short fine-tuning with the original as the teacher wins much of it "
           "back (knowledge distillation). The copy trains through its storage: quantized weights stay on "
           "their grid (straight-through rounding), pruned weights stay zero, and the recovered model is "
           "stored in the same packed bytes. Training text never includes the evaluated tokens.")

recovery = config = None
spec, evaluation = model_and_evaluation()
prune, quant = setting_columns(spec)
st.subheader("Recover")
with user_errors("recovery settings"):
    recovery = recovery_settings()

if spec is not None and evaluation is not None:
    config = RunConfig(model=spec, prune=prune, quant=quant, eval=evaluation)
ready = config is not None and recovery is not None
if st.button("Recover", type="primary", key="recovery.run", disabled=not ready, icon=":material/healing:"):
    with user_errors("recovery"):
        check_recoverable(config)
        start(config, recovery)

job = st.session_state.get(JOB)
if job is not None:
    st.divider()
    show_job(job)
else:
    show_stored()
