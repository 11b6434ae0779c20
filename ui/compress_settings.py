"""Widgets for one compression setting: pruning and quantization -> PruneConfig / QuantConfig.

Config constructors validate; a bad combination raises ConfigError, which the page shows."""
from __future__ import annotations

import streamlit as st

from memopt_core.config import (MAX_PRUNE_RATIO, PRUNE_METHODS, QUANT_FORMATS, RANGE_METHODS, ModelSpec, PruneConfig,
                                QuantConfig)
from ui.errors import user_errors
from ui.methods import explain_prune, explain_quant
from ui.vocabulary import KEEP, RANGE_LABELS, SCALE_CHOICES, format_choice_label, group_label

NONE = "none"
BIT_CHOICES = (2, 3, 4, 5, 6, 8, 16)
CASTS = {"keep": "keep the loaded precision (no quantization)", "fp16": "cast to fp16", "bf16": "cast to bf16"}
N_M_METHODS = ("magnitude", "wanda", "sparsegpt")
PRUNE_HELP = {NONE: "no pruning", "magnitude": "smallest |w| in each layer",
              "magnitude-global": "smallest |w| across all targeted layers", "l2-structured": "whole rows",
              "wanda": "|w| x input norm (calibration)", "sparsegpt": "prune and update (calibration)"}


def setting_columns(spec: ModelSpec | None = None, explain: bool = False) -> tuple[PruneConfig | None,
                                                                                     QuantConfig | None]:
    """The Prune and Quantize columns side by side (with their explanations when ``explain``).
    A bad setting shows its one-line error in its column and comes back as None."""
    prune = quant = None
    prune_column, quant_column = st.columns(2)
    with prune_column:
        st.subheader("Prune")
        with user_errors("pruning"):
            prune = prune_settings()
            if explain:
                explain_prune(prune)
    with quant_column:
        st.subheader("Quantize")
        with user_errors("quantization"):
            quant = quant_settings()
            if explain:
                explain_quant(quant, spec)
    return prune, quant


def prune_settings(where=st) -> PruneConfig | None:
    """Method, pattern (unstructured or N:M) and ratio; None for no pruning."""
    method = where.selectbox("Prune method", [NONE, *PRUNE_METHODS], key="prune.method", persist_state=KEEP,
                             format_func=lambda m: f"{m} ({PRUNE_HELP[m]})")
    if method == NONE:
        return None
    patterns = ["unstructured", "2:4", "4:8"] if method in N_M_METHODS else ["unstructured"]
    pattern = where.radio("Pattern", patterns, horizontal=True, key="prune.pattern", persist_state=KEEP,
                          help="N:M keeps the N largest of every M consecutive inputs (2:4 runs fast on "
                               "sparse tensor cores); the ratio is then fixed at 1 - N/M.")
    if pattern not in patterns:
        pattern = "unstructured"
    ratio = where.slider("Prune ratio", 0.0, MAX_PRUNE_RATIO, 0.5, 0.05, key="prune.ratio", persist_state=KEEP,
                         disabled=pattern != "unstructured", format="%.2f",
                         help="Fraction of the weights set to zero in each targeted layer.")
    config = PruneConfig(method=method, ratio=float(ratio), pattern=pattern)
    return None if config.is_noop else config


def quant_settings(where=st) -> QuantConfig | None:
    """Number format; for the integer grid bits (16 = none, or an fp16/bf16 cast), method, group
    size, grid, range and storage; for the other formats their few options."""
    fmt = where.selectbox("Number format", QUANT_FORMATS, key="quant.format", persist_state=KEEP,
                          format_func=format_choice_label,
                          help="The integer grid (RTN or GPTQ, any bits and group size), or a format deployed "
                               "today: NF4 (QLoRA), FP8, MXFP4/NVFP4 (FP4 microscaling), llama.cpp's k-quants.")
    if fmt != "int":
        return _format_settings(fmt, where)
    bits = where.select_slider("Bit width", BIT_CHOICES, value=4, key="quant.bits", persist_state=KEEP,
                               format_func=lambda b: "16 (none)" if b == 16 else str(b),
                               help="Bits of each stored weight code; 16 means no integer quantization.")
    if bits == 16:
        cast = where.radio("16-bit weights", list(CASTS), format_func=CASTS.get, key="quant.cast",
                           persist_state=KEEP)
        return None if cast == "keep" else QuantConfig(method=cast)
    method = where.radio("Quantizer", ["rtn", "gptq"], horizontal=True, key="quant.method", persist_state=KEEP,
                         format_func=lambda m: {"rtn": "round to nearest", "gptq": "GPTQ (calibration)"}[m])
    group = where.selectbox("Scale per", (*SCALE_CHOICES, "per-tensor"), index=3, format_func=group_label,
                            key="quant.group",
                            persist_state=KEEP, help="One scale per output row (per-channel), per group of "
                                                     "input columns, or one for the whole tensor.")
    symmetric = where.radio("Grid", ["symmetric", "asymmetric"], horizontal=True, key="quant.symmetric",
                            persist_state=KEEP) == "symmetric"
    zero_point = "int"
    if not symmetric:
        zero_point = where.radio("Zero point", ["int", "float"], horizontal=True, key="quant.zero_point",
                                 persist_state=KEEP, format_func=lambda z: {"int": "integer (GPTQ: zero exact)",
                                                                            "float": "float minimum (GGUF Q4_1)"}[z])
    range_method = where.radio("Range", RANGE_METHODS, horizontal=True, key="quant.range", persist_state=KEEP,
                               format_func=RANGE_LABELS.get,
                               help="clip search shrinks each group's range when that lowers its squared error; "
                                    "percentile and entropy clip it from the layer's histogram (torch.ao / TensorRT "
                                    "style).")
    rotate = _rotation(where)
    storage = _storage(where)
    granularity = group if isinstance(group, str) else "group"
    return QuantConfig(method=method, bits=bits, granularity=granularity,
                       group_size=group if isinstance(group, int) else 128, symmetric=symmetric,
                       zero_point=zero_point, range_method=range_method, storage=storage, rotate=rotate)


def _rotation(where) -> str:
    rotate = where.toggle("Rotate first (randomized Hadamard)", key="quant.rotate", persist_state=KEEP,
                          help="Quantize W Q instead of W and rotate the inputs by Q^T at run time: same function "
                               "before quantization, outliers spread over a block. It can hurt: see Formats.")
    return "hadamard" if rotate else "none"


def _storage(where) -> str:
    return where.radio("Storage", ["packed", "fake"], horizontal=True, key="quant.storage", persist_state=KEEP,
                       format_func=lambda s: {"packed": "packed (real saving)", "fake": "fake (simulated)"}[s])


def _format_settings(fmt: str, where) -> QuantConfig:
    """The few options of a non-int format: NF4's double quantization, FP8's scale granularity."""
    options = {}
    if fmt == "nf4":
        options["double_quant"] = where.toggle("Double quantization (8-bit block scales: 4.127 bpw)",
                                               key="quant.double_quant", persist_state=KEEP)
    if fmt.startswith("fp8"):
        options["granularity"] = where.radio("Scale per", ["per-channel", "per-tensor"], horizontal=True,
                                             key="quant.fp8_scale", persist_state=KEEP)
    return QuantConfig(format=fmt, rotate=_rotation(where), storage=_storage(where), **options)
