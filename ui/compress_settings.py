"""Widgets for one compression setting: pruning and quantization -> PruneConfig / QuantConfig.

Config constructors validate; a bad combination raises ConfigError, which the page shows."""
from __future__ import annotations

import streamlit as st

from memopt_core.config import MAX_PRUNE_RATIO, PRUNE_METHODS, PruneConfig, QuantConfig
from ui.vocabulary import KEEP, SCALE_CHOICES, group_label

NONE = "none"
BIT_CHOICES = (2, 3, 4, 5, 6, 8, 16)
CASTS = {"keep": "keep the loaded precision (no quantization)", "fp16": "cast to fp16", "bf16": "cast to bf16"}
N_M_METHODS = ("magnitude", "wanda", "sparsegpt")
PRUNE_HELP = {NONE: "no pruning", "magnitude": "smallest |w| in each layer",
              "magnitude-global": "smallest |w| across all targeted layers", "l2-structured": "whole rows",
              "wanda": "|w| x input norm (calibration)", "sparsegpt": "prune and update (calibration)"}


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
    """Bits (16 = none, or an fp16/bf16 cast), method, group size, grid and storage."""
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
    range_method = where.radio("Range", ["minmax", "clip-search"], horizontal=True, key="quant.range",
                               persist_state=KEEP, help="clip-search shrinks each group's range when that "
                                                        "lowers its squared error.")
    storage = where.radio("Storage", ["packed", "fake"], horizontal=True, key="quant.storage", persist_state=KEEP,
                          format_func=lambda s: {"packed": "packed (real saving)", "fake": "fake (simulated)"}[s])
    granularity = group if isinstance(group, str) else "group"
    return QuantConfig(method=method, bits=bits, granularity=granularity,
                       group_size=group if isinstance(group, int) else 128, symmetric=symmetric,
                       zero_point=zero_point, range_method=range_method, storage=storage)
