"""The Compress page's run logic: run a setting with visible progress, pick the result to show,
and save a compressed model. Results live in this browser session's state (one user never sees
another's) and in the shared results store (so they survive a reload)."""
from __future__ import annotations

import time
from typing import Any

import streamlit as st

from memopt_core.config import RunConfig
from ui.errors import user_errors
from ui.loaders import peek_stored, store_key, stored_run, workbench
from ui.saved_models import save_model

RESULT = "compress.result"  # {"result": RunResult dict, "from_store": bool, "key": store key}
SAVED = "compress.saved"  # store key -> folder of the saved compressed model


def run_setting(config: RunConfig) -> None:
    """Run ``config`` (or fetch it from the store) under an ``st.status`` that names each step."""
    with st.status("Checking the results store ...", expanded=True) as status:
        began = time.perf_counter()
        with user_errors():
            run = stored_run(config, on_progress=lambda text: status.update(label=text))
            st.session_state[RESULT] = {"result": run.result, "from_store": run.from_store, "key": run.key}
            where = "answered from the results store" if run.from_store else "computed and stored"
            status.update(label=f"Done in {time.perf_counter() - began:.1f} s: {where}", state="complete",
                          expanded=False)
            return
        status.update(label="The run failed: see the message below", state="error", expanded=True)


def result_to_show(config: RunConfig | None) -> dict[str, Any] | None:
    """The session's last result, or the store's result for the current settings when there is
    one (so a reloaded page shows what was computed before, without loading a model)."""
    shown = st.session_state.get(RESULT)
    if config is None:
        return shown
    with user_errors("results store"):
        key = store_key(config)
        if shown is not None and shown["key"] == key:
            return shown
        stored = peek_stored(config)
        if stored is not None:
            st.session_state[RESULT] = {"result": stored, "from_store": True, "key": key}
            return st.session_state[RESULT]
        if shown is not None:
            st.info("The settings changed since this result: press **Run** to update it.", icon=":material/sync:")
    return shown


def save_button(shown: dict[str, Any]) -> None:
    """'Save compressed model': compress a copy again, save it under the cache, remember the folder."""
    saved = st.session_state.setdefault(SAVED, {})
    if st.button("Save compressed model", key="compress.save",
                 help="Writes config, tokenizer and the compressed tensors (safetensors) under the memopt "
                      "cache; download it as a zip on the Runs page."):

        with user_errors("save"), st.spinner("Compressing a copy and writing it ..."):
            result = shown["result"]
            bench = workbench(RunConfig.from_dict(result["config"]).model)
            saved[shown["key"]] = str(save_model(bench, result))
    if shown["key"] in saved:
        st.success(f"Saved to `{saved[shown['key']]}`; download it as a zip on the Runs page.",
                   icon=":material/save:")
