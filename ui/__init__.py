"""Streamlit-aware helpers of the dashboard: cached loaders, session state, errors, chart glue.

Pages import from here; memopt_core never imports Streamlit.
"""
