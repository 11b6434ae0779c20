"""'How it works' expanders: a few sentences and the formula of each method."""
from __future__ import annotations

import streamlit as st

from memopt_core.config import ModelSpec, PruneConfig, QuantConfig
from ui.format_methods import explain_format, explain_range, explain_rotation, show_worked_block

# method -> (title, explanation in markdown, formula lines in LaTeX: short enough for a column)
PRUNING = {
    "magnitude": ("magnitude pruning",
                  "In each layer the weights with the smallest absolute value are set to zero: a weight "
                  "that is small is assumed to matter little. No data is needed.",
                  (r"W' = M \odot W,\quad M_{ij} = \mathbb{1}\big[\,|W_{ij}| > \tau\,\big]",
                   r"\tau = \mathrm{quantile}_r\,|W|")),
    "magnitude-global": ("global magnitude pruning",
                         "Like magnitude pruning, but one threshold for all targeted layers: layers with "
                         "many small weights lose more of them.",
                         (r"\tau = \mathrm{quantile}_r \big(|W^{(1)}|, \dots, |W^{(L)}|\big)",)),
    "l2-structured": ("structured (row) pruning",
                      "Whole output rows with the smallest L2 norm are removed, which a dense kernel could skip.",
                      (r"\text{drop row } i \text{ if } \lVert W_{i,:} \rVert_2 \le \mathrm{quantile}_r "
                       r"\lVert W_{k,:} \rVert_2",)),
    "wanda": ("Wanda",
              "Weights are scored by their size times the norm of the input feature they multiply, measured "
              "on calibration text; the lowest scores in each output row are pruned.",
              (r"S_{ij} = |W_{ij}| \cdot \lVert X_{:,j} \rVert_2",)),
    "sparsegpt": ("SparseGPT",
                  "Prunes column by column and updates the remaining weights to cancel the error, using the "
                  "inverse Hessian of the layer's inputs from calibration text.",
                  (r"H = X X^\top", r"\delta_{:,F} = -\frac{w_p}{[H^{-1}]_{pp}}\,[H^{-1}]_{p,F}")),
}
N_M = ("In every block of M consecutive input weights only the N largest scores survive "
       "(2:4 is what sparse tensor cores accelerate).",
       (r"\text{keep the top } N \text{ of } S_{i,j}, \dots, S_{i,j+M-1}", r"j = 0, M, 2M, \dots"))
QUANT_GRIDS = {
    "symmetric": ((r"s = \frac{\max_g |w|}{2^{b-1}-1}", r"q = \mathrm{round}(w/s),\quad \hat w = q\,s"),
                  "Symmetric: the grid is centred on zero, so zero is exact."),
    "int": ((r"s = \frac{\max_g w - \min_g w}{2^b - 1},\quad z = \mathrm{round}(-\min_g w / s)",
             r"\hat w = (q - z)\,s"), "Asymmetric with an integer zero point (GPTQ): the grid fits the "
                                          "range and still holds zero exactly."),
    "float": ((r"s = \frac{\max_g w - \min_g w}{2^b - 1}", r"\hat w = q\,s + \min_g w"),
              "Asymmetric with a float minimum (GGUF Q4_1): the grid fits the range tightly but zero is "
              "usually not on it, so small weights (and pruned zeros) move."),
}


def _latex(lines: tuple[str, ...]) -> None:
    for line in lines:
        st.latex(line)


def explain_prune(config: PruneConfig | None) -> None:
    if config is None:
        return
    title, text, formula = PRUNING[config.method]
    with st.expander(f"How it works: {title}"):
        st.markdown(text)
        _latex(formula)
        if config.pattern != "unstructured":
            st.markdown(N_M[0])
            _latex(N_M[1])
        st.markdown("Pruned weights save memory only when they are stored sparsely (a bitmask plus the "
                    "non-zero values); quantized after pruning, the zeros are codes like any other.")


def explain_quant(config: QuantConfig | None, spec: ModelSpec | None = None) -> None:
    """The 'How it works' expander of ``config``; a worked block from ``spec``'s first layer when it is loaded."""
    if config is None:
        return
    if not config.is_cast and config.format != "int":
        explain_format(config, spec)
        return
    if config.is_cast:
        with st.expander(f"How it works: {config.method} cast"):
            st.markdown("Every weight is rounded to the nearest 16-bit float: half the bytes of float32. "
                        "bf16 keeps float32's range with fewer mantissa bits; fp16 the reverse.")
            st.latex(r"\hat w = \mathrm{round}_{16\text{-bit}}(w)")
        return
    kind = "symmetric" if config.symmetric else config.zero_point
    formula, text = QUANT_GRIDS[kind]
    grain = f"{config.group_size} inputs of a row" if config.granularity == "group" else config.granularity
    with st.expander(f"How it works: {config.label}"):
        st.markdown(f"Each group $g$ of weights (here: {grain}) gets an fp16 scale $s$; every weight "
                    f"becomes a {config.bits}-bit code $q$. {text}")
        _latex(formula)
        if config.range_method == "clip-search":
            st.markdown("Clip search tries ranges shrunk by $\\alpha \\in [0.5, 1]$ and keeps the one with "
                        "the least squared error: outliers are clipped so the rest get a finer grid.")
        explain_range(config)
        explain_rotation(config)
        if config.method == "gptq":
            st.markdown("GPTQ quantizes one column at a time and spreads each column's rounding error over the "
                        "columns not yet quantized, weighted by the inverse Hessian of calibration inputs.")
        st.markdown("Bits per weight, scales and zero points included:")
        st.latex(r"\text{bpw} = b + \frac{16\,(1 + [\text{asymmetric}])}{\text{group size}}")
        st.markdown("**Packed** storage really holds the codes (two 4-bit codes per byte); **fake** keeps the "
                    "dequantized floats, so quality is the same but the memory saving is only simulated.")
        show_worked_block(config, spec)


def explain_sensitivity() -> None:
    with st.expander("How it works: sensitivity and mixed precision"):
        st.markdown("Each unit $u$ (a layer, or a block's layers) is compressed **alone** in a copy of the model, "
                    "the copy is scored on the probe tokens and restored. For a causal LM the loss is the KL "
                    "divergence of its next-token distribution from the original's:")
        st.latex(r"\ell_u(b) = \frac{1}{T}\sum_t \mathrm{KL}\big(p_t \,\|\, \hat p_t^{(u,b)}\big)")
        st.markdown("The plan does not use these isolated losses: they do not add up once every layer is "
                    "quantized. It starts from the model quantized uniformly at the base width $B$ and measures, "
                    "for each unit, the change $\\Delta_u(b)$ when only that unit moves to width $b$ (budget 4: "
                    "$b$ = 3 and 8; 5 and 6 bits are interpolated by the weight error "
                    "$\\lVert W - Q_b(W) \\rVert^2$ they remove). It then picks one width per unit, the least "
                    "predicted loss within the byte budget: a multiple-choice knapsack solved exactly by dynamic "
                    "programming.")
        st.latex(r"\min_{b_u}\; L(B) + \sum_u \Delta_u(b_u) \quad \text{s.t.} \quad \sum_u "
                 r"\mathrm{bytes}_u(b_u) \le \text{budget}")
        st.markdown("The sum assumes the units' losses add up; the measured result of the applied plan shows "
                    "how far that holds.")
