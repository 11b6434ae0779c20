"""Layers: where one setting hurts, block by block and module by module."""
import streamlit as st

from ui.errors import user_errors
from ui.layers_view import choose_result, show_layers

st.title("Layers")
st.caption("Sparsity and quantization error of every targeted layer for one setting, as block x module "
           "heatmaps: which blocks and which projections a setting damages most.")

with user_errors("results"):
    result = choose_result()
    if result is None:
        st.info("No results yet: run a setting on the Compress page (or a sweep on Trade-offs).")
        st.page_link("pages/compress.py", label="Go to Compress", icon=":material/compress:")
    else:
        show_layers(result)
