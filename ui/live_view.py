"""A run in progress on screen: a status line, quality cards with their 95% bands and a convergence
chart, redrawn by a fragment every second until the figure is exact; memory and per-layer
charts as soon as the copy is built. Reads ``LiveRun.snapshot()`` only."""
from __future__ import annotations

from typing import Any

import streamlit as st

from ui import result_view
from ui.chart_glue import show_chart
from ui.live_run import LiveRun, LiveState

# Every redraw costs the browser about 0.2 s of CPU, taken from the engine when both share a
# machine: polling every 0.5 s, Chromium used 0.38 of a core during a warm SmolLM2 run and the page
# waited 36.8 s; every 1.0 s, 0.21 of a core and 25.7 s. Windows take 1.5-2 s each, so a second's
# poll still shows each estimate (half a second later on average).
POLL_S = 1.0
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
    """The running estimate of the ratio and its band against tokens scored."""
    from memopt_core.charts.convergence import convergence  # plotly figure code: loaded with the first estimate

    row = state.estimates[-1]
    show_chart(convergence(state.estimates), "Running estimate of the perplexity ratio and its band: "
               f"{_interval_meaning(row['interval'])}. Windows are scored in text order, never shuffled.",
               key=f"{key}.convergence")


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


def show_live_quality(run: LiveRun, drawn: LiveState, key: str) -> None:
    """The quality part of a run in flight, polled every POLL_S seconds until it ends."""

    def panel() -> None:
        now = run.snapshot()
        if _page_needs_redraw(drawn, now):
            st.rerun()
        if now.estimates:
            show_estimates(now, key)
        elif not now.finished:
            st.info(STAGE_TEXT.get(now.stage, now.stage), icon=":material/hourglass_top:")

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
