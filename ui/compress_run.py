"""The Compress page's run logic: live mode or the Run button start a setting in this session's
worker (``live_run.py``), the results store answers settings computed before, and the page shows
whichever applies. Results live in this browser session's state (one user never sees another's)
and, when exact, in the shared results store (so they survive a reload)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from memopt_core.config import ModelSpec, RunConfig
from ui import live_run, result_view
from ui.errors import user_errors
from ui.live_view import show_run
from ui.loaders import peek_stored, result_saver, run_steps, store_key, workbench
from ui.saved_models import save_model
from ui.weights_view import show_weight_view

RESULT = "compress.result"  # {"result": RunResult dict, "from_store": bool, "key": store key}
SAVED = "compress.saved"  # store key -> folder of the saved compressed model
SEEN = "compress.seen_key"  # the settings' store key at the last render
WIDTHS = (0.01, 0.02, 0.05, 0.1)


def live_default(spec: ModelSpec | None) -> bool:
    """Live mode starts on for the bundled models on the CPU (seconds per setting), off otherwise."""
    return spec is not None and spec.origin == "bundled" and spec.device == "cpu"


def live_controls(spec: ModelSpec | None) -> tuple[bool, float | None]:
    """The 'Live' toggle and the early-stop choice -> (live, target_ci or None)."""
    left, right = st.columns([1, 2])
    live = left.toggle("Live", value=live_default(spec), key="compress.live",
                       help="Releasing a slider starts the run at once (no Run button): a first estimate "
                            "after one window, refined to the exact figure; a newer setting cancels it.")
    with right.popover("Stop early", icon=":material/speed:"):
        early = st.toggle("Stop once the ratio to the original is known within", value=False, key="compress.early")
        width = st.select_slider("+- (95% interval)", WIDTHS, value=0.02, format_func="{:.0%}".format,
                                 key="compress.width", disabled=not early)
    return live, (width if early else None)


def start(config: RunConfig, target_ci: float | None) -> live_run.LiveRun:
    return live_run.start(config, store_key(config), run_steps, result_saver(config), target_ci)


def _stored(config: RunConfig) -> dict[str, Any] | None:
    """The store's result for ``config`` (kept as this session's result), or None."""
    key = store_key(config)
    shown = st.session_state.get(RESULT)
    if shown is not None and shown["key"] == key and shown["from_store"]:
        return shown
    stored = peek_stored(config)
    if stored is None:
        return None
    st.session_state[RESULT] = {"result": stored, "from_store": True, "key": key}
    return st.session_state[RESULT]


def _changed(config: RunConfig) -> bool:
    """Whether the settings differ from the last render's (opening the page is not a change)."""
    key, seen = store_key(config), st.session_state.get(SEEN)
    st.session_state[SEEN] = key
    return seen is not None and seen != key


def drive(config: RunConfig | None, live: bool, target_ci: float | None, run_clicked: bool) -> None:
    """Start, keep or cancel this session's run for the current settings: in live mode a changed
    setting starts at once; the store answers what it holds without running anything."""
    if config is None:
        return
    with user_errors("results store"):
        changed = _changed(config)
        if _stored(config) is not None:
            live_run.stop()  # the newest setting is answered by the store, exactly
            return
        running = live_run.current()
        other_stop = running is not None and running.key == store_key(config) and running.target_ci != target_ci
        if run_clicked or (live and (changed or other_stop)):
            start(config, target_ci)


@dataclass(frozen=True)
class Shown:
    """What the page shows: this session's run of the current settings (``run``), or a finished
    result (``result``) from the store or an earlier run; ``stale`` when the settings moved on."""

    key: str | None
    run: live_run.LiveRun | None = None
    result: dict[str, Any] | None = None
    from_store: bool = False
    stale: bool = False

    @property
    def known(self) -> dict[str, Any] | None:
        """The full result, or the part known before evaluation (memory, layers), or None."""
        if self.run is None:
            return self.result
        state = self.run.snapshot()
        return state.result or state.partial


def to_show(config: RunConfig | None) -> Shown | None:
    """The run of the current settings if this session has one, else the last result kept."""
    key = store_key(config) if config is not None else None
    run = live_run.current()
    if run is not None and run.key == key and run.snapshot().stage != "cancelled":
        result = run.snapshot().result
        if result is not None and result["compressed"].get("exact", True):
            st.session_state[RESULT] = {"result": result, "from_store": False, "key": key}
        return Shown(key=key, run=run)
    kept = st.session_state.get(RESULT)
    if kept is None:
        return None
    return Shown(key=kept["key"], result=kept["result"], from_store=kept["from_store"], stale=kept["key"] != key)


def show(shown: Shown) -> None:
    """The run in flight or the result: header, quality, memory, per-layer charts, weights, generations."""
    known = shown.known
    st.divider()
    if known is None:  # the run is still loading the model or compressing
        show_run(shown.run, key="compress")
        return
    origin = " · from the results store" if shown.from_store else ""
    st.header(f"{known['model']['label']}: {result_view.setting_of(known)}{origin}")
    if shown.stale:
        st.info("The settings changed since this result: press **Run** (or turn **Live** on) to update it.",
                icon=":material/sync:")
    if shown.run is not None:
        result = show_run(shown.run, key="compress")
    else:
        result = shown.result
        for part in (result_view.show_notes, result_view.show_quality, result_view.show_memory):
            part(result)
        result_view.show_layer_charts(result, key="compress")
    show_weight_view(known, key="compress")
    if result is not None:
        result_view.show_generation(result)
        result_view.show_protocol(result)
        if result["compressed"].get("exact", True):
            save_button({"result": result, "key": shown.key})


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
