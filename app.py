"""memopt dashboard: declares the pages, nothing else."""
import streamlit as st

st.set_page_config(page_title="memopt", page_icon=":material/compress:", layout="wide")
st.title("memopt")
st.write("Pages arrive with the dashboard issue; the engine is usable from `python -m memopt_core`.")
