"""The Recovery page's parts: recovery settings, starting a run in a worker thread, the live curve
(a fragment polling the job's holder), and the before / after result. The job lives in this browser
session's state; finished results live in the shared results store."""
from __future__ import annotations

import math
from typing import Any

import streamlit as st

from memopt_core.config import RunConfig
from memopt_core.recovery.charts import recovery_curve
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.recovery.stored import peek_recovered
from ui import result_view
from ui.chart_glue import show_chart
from ui.errors import user_errors
from ui.loaders import is_loaded, result_store, workbench
from ui.model_settings import bundled_kind
from ui.recovery_job import RecoveryJob
from ui.vocabulary import KEEP

JOB = "recovery.job"  # the RecoveryJob of this browser session
SHOWN = "recovery.shown"  # {"result": dict, "from_store": bool} answered from the store
STEPS = (10, 20, 30, 40, 60, 100, 150, 200, 300, 500)
LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3)
TOKENS = (256, 512, 1024, 2048)
TEXTS = {"both": "both bundled texts", "wikipedia": "Wikipedia leads", "news": "news articles"}
LAYERS = {"compressed+norms": "compressed layers and norms", "compressed": "compressed layers only"}
POLL_S = 1.0


def recovery_settings(where=st) -> RecoveryConfig:
    """Steps, learning rate, tokens per step, layers, training text and curve interval -> a config."""
    defaults = RecoveryConfig()
    first, second = where.columns(2)
    steps = first.select_slider("Steps", STEPS, value=defaults.steps, key="recovery.steps", persist_state=KEEP,
                                help="Optimizer steps; SmolLM2 takes a few seconds per step on 2 CPU cores.")
    lr = first.select_slider("Learning rate", LRS, value=defaults.lr, key="recovery.lr", persist_state=KEEP,
                             format_func=lambda v: f"{v:g}", help="AdamW; warm-up, then a cosine to a tenth.")
    tokens = first.select_slider("Tokens per step", TOKENS, value=defaults.tokens_per_step, key="recovery.tokens",
                                 persist_state=KEEP, help="Causal LMs: windows of 256 tokens per step. "
                                                          "Encoders train on 32 sentences per step.")
    layers = second.radio("What trains", list(LAYERS), format_func=LAYERS.get, key="recovery.layers",
                          persist_state=KEEP, help="Norm weights are few, cheap and stored uncompressed.")
    text = second.radio("Training text", list(TEXTS), format_func=TEXTS.get, key="recovery.text",
                        persist_state=KEEP, help="Never the evaluated tokens: training starts after the first "
                                                 "16,384 tokens of each bundled text.")
    every = second.select_slider("Score the held-out set every", (5, 10, 20, 25, 50), value=defaults.eval_every,
                                 key="recovery.every", persist_state=KEEP, format_func=lambda v: f"{v} steps")
    return RecoveryConfig(steps=steps, lr=lr, tokens_per_step=tokens, layers=layers, train_text=text,
                          eval_every=every)


def start(config: RunConfig, recovery: RecoveryConfig) -> None:
    """Answer from the store, or load the original (in the page, once) and start a worker."""
    old = st.session_state.get(JOB)
    if old is not None and not old.snapshot()["done"]:
        old.stop()  # one recovery per session: the new setting replaces the old one
    st.session_state.pop(JOB, None)
    found = peek_recovered(config, recovery, result_store())
    if found is not None:
        st.session_state[SHOWN] = {"result": found, "from_store": True}
        return
    st.session_state.pop(SHOWN, None)
    message = f"Loading {config.model.source} (once; later runs reuse it)" if not is_loaded(config.model) else \
        "Preparing"
    with st.spinner(message):
        bench = workbench(config.model)
    job = RecoveryJob(config, recovery)
    job.start(bench, result_store())
    st.session_state[JOB] = job


def _progress_text(state: dict[str, Any], metric: str) -> str:
    text = f"{state['phase']} · step {state['step']} of {state['steps']}"
    if state["loss"] is not None:
        text += f" · loss {state['loss']:.4f}"
    if state["points"]:
        text += f" · validation {metric} {state['points'][-1]['validation']:.4g}"
    return text + f" · {state['seconds']:.0f} s"


def _metric(config: RunConfig) -> str:
    return "cosine" if bundled_kind(config.model) == "encoder" else "perplexity"


def show_job(job: RecoveryJob) -> None:
    """The live part: progress bar, curve and a Stop button, redrawn every second while it runs."""
    running = not job.snapshot()["done"]

    @st.fragment(run_every=POLL_S if running else None)
    def live() -> None:
        state = job.snapshot()
        if state["done"] and running:
            st.rerun(scope="app")  # draw the result and stop polling
        metric = _metric(job.config)
        st.progress(min(1.0, state["step"] / max(1, state["steps"])), text=_progress_text(state, metric))
        if state["points"]:
            show_chart(recovery_curve(state["points"], metric), "Held-out validation data, never trained on and "
                       "not the evaluated windows; the star marks the checkpoint a stop would keep.",
                       key="recovery.live_curve")
        if not state["done"]:
            st.button("Stop (keep the best checkpoint)", key="recovery.stop", on_click=job.stop,
                      icon=":material/stop:")

    live()
    state = job.snapshot()
    if state["error"]:
        st.error(f"recovery: {state['error']}", icon=":material/error:")
    elif state["result"] is not None:
        show_result(state["result"], state["from_store"])


def _value(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else ("inf" if not math.isfinite(value) else f"{value:.4g}")


def _cards(result: dict[str, Any]) -> None:
    key = "perplexity" if result["model"]["kind"] == "causal-lm" else "cosine_similarity"
    before, after, base = result["before_recovery"], result["compressed"], result["baseline"]
    name = "Perplexity" if key == "perplexity" else "Cosine to original"
    original = _value(base, key) if key == "perplexity" else "1"
    columns = st.columns(4)
    columns[0].metric(f"{name}, original", original, border=True)
    columns[1].metric(f"{name}, compressed", _value(before, key), border=True)
    delta = None
    if all(isinstance(m.get(key), (int, float)) and math.isfinite(m[key]) for m in (before, after)):
        delta = f"{after[key] - before[key]:+.4g}"
    columns[2].metric(f"{name}, recovered", _value(after, key), delta=delta,
                      delta_color="inverse" if key == "perplexity" else "normal", border=True)
    closed = _gap_closed(base, before, after, key)
    columns[3].metric("Gap to the original closed", "-" if closed is None else f"{closed:.0%}", border=True,
                      help="(compressed - recovered) / (compressed - original), on the evaluated windows")


def _gap_closed(base: dict, before: dict, after: dict, key: str) -> float | None:
    original = 1.0 if key == "cosine_similarity" else base.get(key)
    values = (original, before.get(key), after.get(key))
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values) or values[1] == values[0]:
        return None
    return (values[1] - values[2]) / (values[1] - values[0])


def show_result(result: dict[str, Any], from_store: bool) -> None:
    """Before / after cards, the kept checkpoint's curve, memory and sparsity checks, protocol."""
    recovery, checks = result["recovery"], result["recovery"]["checks"]
    origin = " · from the results store" if from_store else ""
    st.subheader(f"{result['model']['label']}: {result_view.setting_of(result)} {recovery['label']}{origin}")
    _cards(result)
    show_chart(recovery_curve(recovery["curve"], recovery["metric"], recovery.get("original_validation")),
               f"{recovery['steps_done']} of {recovery['steps']} steps, {recovery['tokens']:,} training tokens, "
               f"{recovery['seconds']:.0f} s ({recovery['stop_reason']}); the kept checkpoint is step "
               f"{recovery['best_step']}. Validation data: {recovery['data']['rule']}.", key="recovery.curve")
    same = "the same bytes" if checks["same_bytes"] else "DIFFERENT bytes"
    st.success(f"Stored {checks['stored_bytes_before']:,} bytes before recovery and {checks['stored_bytes_after']:,} "
               f"after: {same} ({checks['bits_per_weight_after']:.3f} bits per weight); sparsity counted from the "
               f"weights {checks['sparsity_before']:.2%} before, {checks['sparsity_after']:.2%} after.",
               icon=":material/memory:")
    if recovery["message"]:
        st.info(recovery["message"], icon=":material/info:")
    result_view.show_quality(result)
    result_view.show_memory(result)
    result_view.show_generation(result)
    with st.expander("Training settings, data and protocol"):
        st.json({"recovery": {k: v for k, v in recovery.items() if k != "curve"}, "protocol": result["protocol"],
                 "timings": result["timings"]}, expanded=False)


def show_stored() -> None:
    shown = st.session_state.get(SHOWN)
    if shown is not None:
        with user_errors("recovery"):
            show_result(shown["result"], shown["from_store"])
