"""Trade-offs: a grid of settings on one model, quality against memory, with the Pareto front."""
import streamlit as st

from ui.errors import user_errors
from ui.model_settings import model_and_evaluation
from ui.sweep_view import SWEEP, executor_settings, grid_settings, run_grid, show_sweep

st.title("Trade-offs")
st.caption("Run a grid of pruning and quantization settings on one model and see which give the most "
           "quality for the memory. Finished settings are stored as they finish: stopping keeps them, and "
           "running the grid again answers them from the results store.")

grid = executor = None
place_ok = False
spec, evaluation = model_and_evaluation()

with user_errors("grid"):
    grid = grid_settings()
    st.caption(f"{len(grid.settings())} settings (combinations that mean the same are run once).")
with user_errors("cluster"):
    executor = executor_settings()
    place_ok = True
name = st.text_input("Sweep name", key="sweep.name", persist_state="session", placeholder="<model> sweep",
                     help="Names the sweep in the results store (Runs page).").strip()

ready = spec is not None and evaluation is not None and grid is not None and place_ok
if st.button("Run sweep", type="primary", key="tradeoffs.run", disabled=not ready, icon=":material/play_arrow:"):
    with user_errors("sweep"):
        run_grid(spec, grid, evaluation, name or f"{spec.source} sweep", executor)

sweep = st.session_state.get(SWEEP)
if sweep is not None:
    st.divider()
    show_sweep(sweep)
