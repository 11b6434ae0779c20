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

- **It hurts SmolLM2, although each layer's weights get easier to quantize.** {smollm_figures}
- **Where the error lands.** Without rotation, rounding error stays in the input channels of the weights that
  caused it; with rotation every channel of a Hadamard block carries the block's average error, including the
  few channels where the activations are huge. The first token of each sequence (the attention sink) has
  activations hundreds to thousands of times larger in a few channels and nearly zero value vectors, so it is the
  token that pays: its relative output error grows the most, and every later token attends to it.
- **Where it helps.** {helps_figures} Rotation earns most when the *activations* are quantized too (W4A4):
  there the outlier channels set each token's scale, and spreading them is what rotation is for; memopt
  quantizes weights only, so that gain is shown below as a simulation.
"""
# Measured by bench/bench_formats.py on SmolLM2-135M (one run on the shared 2-core machine; see the README).
SMOLLM_FIGURES = ("bench_formats measured perplexity (first 512 tokens of the Wikipedia leads) RTN W4 per-channel "
                  "21.5 → 26.4 with rotation and RTN W3 g64 99.5 → 784. At W4 per-channel the rows' absmax/RMS falls with "
                  "rotation (3.67 → 3.38) and the layers' output error falls in 90% of them; what rises is the first "
                  "token's error (measure it below).")
HELPS_FIGURES = ("On MiniLM's float weights at W4 per-channel the cosine to the original rose from 0.9036 to 0.9109 "
                 "with rotation (run --model minilm-l6 --bits 4 [--rotate hadamard]). GPTQ with rotation solves in the "
                 "rotated basis and spreads each column's error over the columns still to come: on SmolLM2 "
                 "bench_formats measured GPTQ W4 per-channel 18.28 → 14.47 and GPTQ W3 g64 41.15 → 24.83 with rotation.")


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
