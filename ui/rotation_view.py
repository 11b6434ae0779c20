"""The rotation lesson on the Formats page: what a randomized Hadamard rotation does to the rows and
to where the error lands, measured on the loaded model, with the figures of bench_formats."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from memopt_core.config import CalibConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.runs.format_presets import ROTATION_PAIRS
from ui import loaders  # looked up at call time: tests replace the loader
from ui.errors import user_errors

LESSON = """
**Rotation before quantizing** (QuaRot, QuIP#) multiplies each weight by an orthogonal ``Q`` on its input side
and each input by ``Q^T``: the model computes the same function, and the quantizer sees ``W Q``, whose rows are
mixed within each Hadamard block. That spreads a lone outlier over the block, so the grid's step (set by the
absmax) shrinks. It is not free of side effects:

- **It hurts SmolLM2.** memopt's SmolLM2 comes from a Q4_1 GGUF file: every group of 32 weights already sits on a
  16-level uniform grid, so its rows are *flatter* than a Gaussian. Rotation makes them Gaussian: the rows'
  absmax/RMS rises (measured below), every grid step grows, and the error rises in every layer. bench_formats
  measured perplexity {smollm_figures}.
- **Where the error lands.** Without rotation, rounding error stays in the input channels of the weights that
  caused it; with rotation it is spread evenly over every channel of the block, including the few channels where
  the activations are huge. The table shows the share of the output error that passes through the 8 channels
  with the largest activations, with and without rotation.
- **Where it helps.** On weights with real outliers (MiniLM's float32 weights) and with GPTQ, which compensates the
  error in the rotated basis (and is blind to where it lands): {helps_figures}. Rotation earns most when the
  *activations* are quantized too (W4A4): there the outlier channels are the problem it removes; memopt
  quantizes weights only.
"""
# Filled from bench/bench_formats.py's printed figures (one run on the shared machine; see the README).
SMOLLM_FIGURES = "(run bench/bench_formats.py to fill in)"
HELPS_FIGURES = "(run bench/bench_formats.py to fill in)"


def _measure(spec: ModelSpec, quant: QuantConfig) -> pd.DataFrame:
    from memopt_core.compression.rotation_report import rotation_reports  # torch: only when measuring

    bench = loaders.workbench(spec)
    tokens = bench.calibration(RunConfig(spec, calib=CalibConfig(samples=4, seq_len=256))).tokens
    reports = rotation_reports(bench.loaded.model, tokens, quant)
    return pd.DataFrame([{"layer": r.layer, "absmax/RMS": r.absmax_to_rms[0], "absmax/RMS rotated": r.absmax_to_rms[1],
                          "input energy in top 8 channels": r.activation_share,
                          "error share via top 8": r.error_share[0], "error share via top 8, rotated": r.error_share[1],
                          "first-token error": r.first_token_error[0],
                          "first-token error, rotated": r.first_token_error[1],
                          "other-token error": r.other_tokens_error[0],
                          "other-token error, rotated": r.other_tokens_error[1]} for r in reports])


def show_rotation_lesson(spec: ModelSpec | None) -> None:
    st.subheader("Rotation: why it hurts SmolLM2 and where it helps")
    st.markdown(LESSON.format(smollm_figures=SMOLLM_FIGURES, helps_figures=HELPS_FIGURES))
    labels = {q.label: q for q in ROTATION_PAIRS}
    choice = st.selectbox("Grid to measure", list(labels), key="formats.rotation_grid")
    if spec is None or not st.button("Measure rotation on this model", key="formats.rotation_run",
                                     help="4 x 256 calibration tokens through the model; every targeted layer "
                                          "quantized with and without rotation (no evaluation run)."):
        return
    with user_errors("rotation measurement"), st.spinner("Measuring every layer with and without rotation ..."):
        frame = _measure(spec, labels[choice])
        helped = (frame["other-token error, rotated"] < frame["other-token error"]).mean()
        st.markdown(f"Rows' mean absmax/RMS **{frame['absmax/RMS'].mean():.2f} → "
                    f"{frame['absmax/RMS rotated'].mean():.2f}** with rotation; relative output error of the first "
                    f"token **{frame['first-token error'].mean():.3g} → {frame['first-token error, rotated'].mean():.3g}**,"
                    f" of the other tokens **{frame['other-token error'].mean():.3g} → "
                    f"{frame['other-token error, rotated'].mean():.3g}**; rotation lowers the other tokens' error in "
                    f"**{helped:.0%}** of the layers.")
        st.dataframe(frame, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="percent") for c in frame.columns if "share" in c or "energy" in c})
