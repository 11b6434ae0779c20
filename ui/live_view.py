"""A run in progress on screen: a status line, quality cards with their 95% bands and a convergence
chart, redrawn by a fragment each time the run has something new until the figure is exact;
memory and per-layer charts as soon as the copy is built. Reads ``LiveRun`` only."""
from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

from ui import result_view
from ui.live_run import CURRENT, LiveRun, LiveState

# Every redraw costs the browser about 0.2 s of CPU, taken from the engine when both share a
# machine (polling every 0.5 s, Chromium used 0.38 of a core during a warm SmolLM2 run; every
# 1.0 s, 0.21). So a timer rerun of the fragment draws the latest state and then holds the script
# thread until the run has something new (``hold_until_changed``): the browser's timer still ticks
# every POLL_S, but Streamlit folds the ticks that arrive during a run into one rerun, which starts
# as soon as the hold ends. The page redraws once per change (a window: 1.5-2 s on SmolLM2), and
# shows it at once rather than at the next tick.
POLL_S = 1.0
HOLD_S = 10.0  # the longest hold: then one redraw of the same state (a slow window on a big model)
YIELD_S = 0.2  # how often a hold lets Streamlit act on a newer request (a slider moved)
# Windows scored side by side end together: their estimates arrive a few milliseconds apart, and
# drawing each cost the browser a redraw (windows 2 and 3 were drawn 0.15-0.76 s apart). A hold that
# ends waits until updates pause for SETTLE_S (at most SETTLE_MAX_S), so a round is drawn once.
SETTLE_S = 0.1
SETTLE_MAX_S = 0.5
STAGE_TEXT = {"loading": "Loading the model (once; later settings reuse it) ...",
              "compressing": "Compressing a copy ...", "scoring": "Scoring windows ...",
              "finishing": "Every window scored; zero-shot and generation ...",
              "cancelled": "Stopped: a newer setting replaced this one."}


def _band(values: list[float] | None, pattern: str) -> str:
    if not values:
        return "95% interval from the 2nd window on"
    return f"95%: {pattern.format(values[0])} to {pattern.format(values[1])}"


def _ratio_band(row: dict[str, Any]) -> str:
    band = row.get("ratio_ci95")
    if not band or not row.get("perplexity_ratio"):
        return _band(None, "")
    return f"95%: {band[0]:.4f} to {band[1]:.4f} (+-{(band[1] - band[0]) / 2 / row['perplexity_ratio']:.1%})"


def estimate_cards(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, band caption) of each card for one estimate (``Estimate.to_dict()``)."""
    ratio = row.get("perplexity_ratio")
    original = row["perplexity"] / ratio if ratio else None
    return [("Perplexity, original", "-" if original is None else f"{original:.3f}", "on the same tokens"),
            ("Perplexity, compressed", f"{row['perplexity']:.3f}", _band(row.get("perplexity_ci95"), "{:.3f}")),
            ("Ratio to original", "-" if ratio is None else f"{ratio:.4f}x", _ratio_band(row)),
            ("KL from original", "-" if row.get("kl_divergence") is None else f"{row['kl_divergence']:.3g}",
             _band(row.get("kl_ci95"), "{:.3g}")),
            ("Top-1 agreement", "-" if row.get("top1_agreement") is None else f"{row['top1_agreement']:.1%}",
             _band(row.get("top1_agreement_ci95"), "{:.1%}"))]


def progress_line(state: LiveState) -> str:
    """'Estimate from 1,022 of 4,088 tokens (window 2 of 8), 3.1 s' or 'Exact: ...'."""
    row = state.estimates[-1]
    total = row["total_windows"] * row["tokens"] // max(1, row["windows"])
    where = f"{row['tokens']:,} of {total:,} tokens (window {row['windows']} of {row['total_windows']})"
    if row.get("exact"):
        return f"Exact: all {row['total_windows']} windows, {row['tokens']:,} tokens"
    return f"Estimate from {where}"


def _interval_meaning(method: str) -> str:
    # Imported when estimates exist: by then the worker has loaded torch, so this costs nothing.
    from memopt_core.evaluation.intervals import INTERVAL_MEANING

    return INTERVAL_MEANING.get(method, method)


def show_convergence(state: LiveState, key: str) -> None:
    """The running estimate of the ratio and its band against tokens scored (a Vega-Lite chart:
    redrawn after every window, see ``memopt_core/charts/convergence.py``)."""
    from memopt_core.charts.convergence import convergence  # the charts package loads plotly: with the first estimate

    row = state.estimates[-1]
    st.vega_lite_chart(convergence(state.estimates), width="stretch", key=f"{key}.convergence")
    st.caption("Running estimate of the perplexity ratio and its band: "
               f"{_interval_meaning(row['interval'])}. Windows are scored in text order, never shuffled.")


def show_estimates(state: LiveState, key: str) -> None:
    """Progress line, cards with their bands and the convergence chart of the latest estimate."""
    st.markdown(f"**{progress_line(state)}**")
    for column, (label, value, band) in zip(st.columns(5), estimate_cards(state.estimates[-1])):
        column.metric(label, value, border=True)
        column.caption(band)
    show_convergence(state, key)


def _page_needs_redraw(drawn: LiveState, now: LiveState) -> bool:
    """The copy got built or the run ended: the page outside the fragment has new parts to draw."""
    return (drawn.partial is None) != (now.partial is None) or drawn.finished != now.finished


def _yield_to_streamlit() -> None:
    # Reading session state is one of Streamlit's yield points. A widget change reruns the page at
    # once in a new script thread (Streamlit's fast reruns) and asks the old one to stop, which it
    # does at its next yield point: here, so a hold never outlives its page by more than YIELD_S.
    # The fragment's own timer ticks never interrupt a run: they wait for it and fold into one.
    st.session_state.get(CURRENT)


def settle(run: LiveRun, pause_s: float = SETTLE_S, longest_s: float = SETTLE_MAX_S) -> None:
    """Wait while ``run``'s updates keep coming less than ``pause_s`` apart, at most ``longest_s``."""
    deadline = time.monotonic() + longest_s
    while time.monotonic() < deadline and run.wait_for_change(run.snapshot(), pause_s):
        pass


def hold_until_changed(run: LiveRun, seen: LiveState, yield_check: Callable[[], None] = _yield_to_streamlit,
                       hold_s: float | None = None, step_s: float = YIELD_S) -> bool:
    """Block until ``run``'s state is no longer ``seen`` (and its updates pause, see ``settle``) or
    ``hold_s`` (default HOLD_S) seconds have passed, calling ``yield_check`` every ``step_s``
    seconds meanwhile; True when the state changed."""
    deadline = time.monotonic() + (HOLD_S if hold_s is None else hold_s)
    while True:
        left = deadline - time.monotonic()
        if run.wait_for_change(seen, max(0.0, min(step_s, left))):
            settle(run)
            return True
        if left <= step_s:
            return False
        yield_check()


def show_live_quality(run: LiveRun, drawn: LiveState, key: str) -> None:
    """The quality part of a run in flight, redrawn on each change until it ends (see POLL_S)."""
    inline = [True]  # the first call is inline in the page's run: holding it would hold the page below

    def panel() -> None:
        now = run.snapshot()
        if _page_needs_redraw(drawn, now):
            st.rerun()
        if now.estimates:
            show_estimates(now, key)
        elif not now.finished:
            st.info(STAGE_TEXT.get(now.stage, now.stage), icon=":material/hourglass_top:")
        if not inline[0] and not now.finished:
            hold_until_changed(run, now)
        inline[0] = False

    st.subheader("Quality: original vs compressed")
    st.fragment(panel, run_every=None if drawn.finished else POLL_S)()


def show_run(run: LiveRun, key: str) -> dict[str, Any] | None:
    """Everything of a run that exists so far; returns the final result dict once it is done."""
    state = run.snapshot()
    if state.stage == "failed":
        st.error(f"The run failed: {state.error}", icon=":material/error:")
        return None
    if state.stage == "cancelled" and state.result is None:
        st.info(STAGE_TEXT["cancelled"], icon=":material/sync:")
        return None
    shown = state.result or state.partial
    if shown is not None:
        result_view.show_notes(shown)
    if state.result is not None:
        result_view.show_quality(state.result)
        if state.estimates:
            st.markdown(f"**{progress_line(state)}**")
            with st.expander("How the estimate converged", expanded=not state.result["compressed"].get("exact", True)):
                show_convergence(state, key)
    else:
        show_live_quality(run, state, key)
    if shown is not None:
        result_view.show_memory(shown)
        result_view.show_layer_charts(shown, key=key)
    return state.result
