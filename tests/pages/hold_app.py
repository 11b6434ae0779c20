"""A page for the browser test of the live panel's hold: a slider above the panel of a run that
never changes, so only Streamlit can end a hold early. Each hold's end (and why) is appended to the
file named by MEMOPT_HOLD_LOG."""
import os

import streamlit as st

from ui import live_view
from ui.live_run import LiveRun

live_view.HOLD_S = 600.0  # far longer than the test waits: the hold must give way, not time out
hold = live_view.hold_until_changed


def marked_hold(*args, **kwargs) -> bool:
    st.caption("Holding in a timer rerun")  # drawn inside the fragment, just before it holds
    how = "timed out"
    try:
        hold(*args, **kwargs)
    except BaseException as stopped:  # Streamlit's StopException / RerunException at a yield point
        how = type(stopped).__name__
        raise
    finally:
        with open(os.environ["MEMOPT_HOLD_LOG"], "a") as log:
            log.write(f"hold ended: {how}\n")


live_view.hold_until_changed = marked_hold
value = st.slider("Value", 0, 10, 0)
st.markdown(f"Slider at {value}")
if "run" not in st.session_state:
    st.session_state.run = LiveRun(None, "never", lambda *request: iter(()), save=None)  # never started
live_view.show_live_quality(st.session_state.run, st.session_state.run.snapshot(), key="hold")
