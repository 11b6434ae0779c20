"""'How it works' for the number formats, rotation and histogram ranges, with a worked block from
a real layer when the model is loaded."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from memopt_core.config import ModelSpec, QuantConfig
from ui import loaders  # looked up at call time: tests replace the loader

# format -> (explanation in markdown, formula lines in LaTeX, bits per weight in LaTeX)
FORMATS = {
    "nf4": ("Each block of 64 consecutive weights is divided by its absolute maximum and every value becomes "
            "the nearest of 16 *NormalFloat* levels: quantiles of a standard normal scaled to [-1, 1], dense near "
            "zero where most weights are (QLoRA; bitsandbytes' table). Double quantization stores the fp32 "
            "absmaxes as 8-bit codes in blocks of 256.",
            (r"c_b = \max_{i \in b} |w_i|,\quad q_i = \arg\min_k \big| w_i / c_b - \mathrm{NF4}_k \big|",
             r"\hat w_i = \mathrm{NF4}_{q_i}\, c_b"),
            r"\text{bpw} = 4 + \tfrac{32}{64} = 4.5 \quad(\text{double quant: } 4 + \tfrac{8}{64} + "
            r"\tfrac{32}{64 \cdot 256} = 4.127)"),
    "fp8": ("Each row (or the whole tensor) is scaled so its largest weight lands on the format's largest value "
            "and every weight is rounded to the nearest 8-bit float (torch's own cast). E4M3 keeps 3 mantissa bits "
            "(largest 448), E5M2 2 bits with a wider range (57,344): the relative step is the same at every "
            "magnitude, unlike an integer grid.",
            (r"s = \max |w| / \mathrm{FP8}_{\max},\quad \hat w = \mathrm{fp8}(w / s)\, s",),
            r"\text{bpw} = 8 + \tfrac{32}{\text{in}} \ (\text{per channel})"),
    "mxfp4": ("OCP microscaling: blocks of 32 share a power-of-two scale (one E8M0 byte) chosen so the block's "
              "largest magnitude lands in [4, 8); each weight is rounded to the nearest E2M1 value "
              "(0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives; ties to even) and values above 6 saturate. A "
              "power-of-two scale cannot fit the block tightly: the top of the grid is often unused or clipped.",
              (r"X = \lfloor \log_2 \max_{i \in b} |w_i| \rfloor - 2", r"\hat w_i = \mathrm{E2M1}(w_i / 2^X)\, 2^X"),
              r"\text{bpw} = 4 + \tfrac{8}{32} = 4.25"),
    "nvfp4": ("NVIDIA's FP4: E2M1 elements in blocks of 16 with an FP8 E4M3 scale each (fine steps, not only powers "
              "of two) and one fp32 scale per tensor that keeps the block scales inside E4M3's range.",
              (r"g = \frac{\max |W|}{6 \cdot 448},\quad s_b = \mathrm{fp8}\Big(\frac{\max_{i \in b} |w_i|}{6\, g}\Big)",
               r"\hat w_i = \mathrm{E2M1}\big(w_i / (s_b\, g)\big)\, s_b\, g"),
              r"\text{bpw} = 4 + \tfrac{8}{16} = 4.5"),
    "kquant": ("llama.cpp's k-quants: superblocks of 256 weights whose sub-blocks (16 or 32 weights) each get small "
               "integer scale (and minimum) codes, themselves scaled by one fp16 ``d`` (and ``dmin``) per "
               "superblock: two levels of scales for a few bits. This is memopt's implementation of that layout "
               "(the same bytes gguf reads; the scale search is memopt's). Rows that are not a multiple of 256 "
               "fall back as llama.cpp does: Q2_K/Q3_K to IQ4_NL, Q4_K to Q5_0, Q6_K to Q8_0 (blocks of 32); the "
               "run's notes and the Layers table say which layers did.",
               (r"\hat w_i = d \cdot sc_j \cdot q_i - d_{\min} \cdot m_j",),
               r"\text{bpw: Q2\_K } 2.625,\ \text{Q3\_K } 3.4375,\ \text{Q4\_K } 4.5,\ \text{Q6\_K } 6.5625"),
}
ROTATION = ("The weight is quantized in a rotated basis: ``Q = D H`` with ``D`` random signs and ``H`` a "
            "block-diagonal Hadamard matrix (blocks of the largest power of two dividing the width, entries "
            "$\\pm 1/\\sqrt{b}$). ``Q`` is orthogonal, so with the inputs rotated at run time the layer computes the "
            "same function before quantization. Each block's values get mixed: an outlier is spread over the "
            "whole block, and every row's distribution moves towards a Gaussian, which helps rows with outliers "
            "and hurts rows that were flatter than a Gaussian.")
RANGES = {"percentile": "The magnitudes $|w| / \\max_g |w|$ of all groups of the layer are pooled into one "
                        "histogram; each group's range is clipped at their 99.9th percentile.",
          "entropy": "The magnitudes $|w| / \\max_g |w|$ of all groups are pooled into one histogram; the clip "
                     "threshold is the one whose clipped histogram and its $2^{b-1}$-level quantized version differ "
                     "least in KL divergence (TensorRT's entropy calibration)."}


def _format_key(fmt: str) -> str:
    return "fp8" if fmt.startswith("fp8") else ("kquant" if fmt.startswith("q") else fmt)


def explain_format(config: QuantConfig, spec: ModelSpec | None) -> None:
    """The expander for a non-int format (formula, bits per weight, a worked block)."""
    text, formula, bpw = FORMATS[_format_key(config.format)]
    with st.expander(f"How it works: {config.label}"):
        st.markdown(text)
        for line in formula:
            st.latex(line)
        st.latex(bpw)
        explain_rotation(config)
        show_worked_block(config, spec)


def explain_rotation(config: QuantConfig) -> None:
    if config.rotate == "hadamard":
        st.markdown("**Rotation.** " + ROTATION)
        st.latex(r"y = W x = (W Q)\,(Q^\top x),\quad Q = D H")


def explain_range(config: QuantConfig) -> None:
    if config.range_method in RANGES:
        st.markdown(RANGES[config.range_method] + " The chosen clip is drawn on the weight histogram.")


def show_worked_block(config: QuantConfig, spec: ModelSpec | None) -> None:
    """The first block of the model's first targeted layer, when the model is loaded."""
    if spec is None or not loaders.model_at_hand(spec):
        st.caption("A worked block from a real layer appears here once the model is loaded (after a run).")
        return
    name, block = loaders.with_model(spec, "memopt_core.compression.worked_block:first_layer_block", config)
    st.markdown(f"**A worked block**: {name}, {block.where}. " + "; ".join(block.scales) + ".")
    st.dataframe(pd.DataFrame({"weight": block.values, "code": block.codes, "decoded": block.decoded,
                               "error": block.errors}), hide_index=True, height=220)
    st.caption(f"{len(block.levels)} values this block can take; largest error {block.max_abs_error:.3g}.")
