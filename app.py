"""memopt dashboard: declares the pages, nothing else (each page is a file in pages/)."""
import streamlit as st

st.set_page_config(page_title="memopt", page_icon=":material/compress:", layout="wide")
st.navigation([
    st.Page("pages/compress.py", title="Compress", icon=":material/compress:", default=True),
    st.Page("pages/tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
    st.Page("pages/recovery.py", title="Recovery", icon=":material/healing:"),
    st.Page("pages/planner.py", title="Memory planner", icon=":material/calculate:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/deploy.py", title="Deploy", icon=":material/rocket_launch:"),
]).run()
