"""Showing figures: every chart gets a caption saying what it shows and whether the memory
saving behind it is real (packed storage) or simulated (fake quantization, masks held dense)."""
from __future__ import annotations

from typing import Any

import streamlit as st


def show_chart(figure, caption: str, key: str) -> None:
    """A plotly figure at full width with its one-line caption underneath."""
    st.plotly_chart(figure, key=key, config={"displaylogo": False})
    st.caption(caption)


def saving_kind(result: dict[str, Any]) -> str:
    """'real', 'simulated' or 'none' for one run's memory figures."""
    memory = result["memory"]
    if memory.get("simulated"):
        return "simulated"
    return "real" if memory["bits_per_weight"] < memory["dense_bits_per_weight"] else "none"


def saving_phrase(result: dict[str, Any]) -> str:
    """Half a sentence for captions: is the memory saving shown real or simulated?"""
    kind = saving_kind(result)
    if kind == "simulated":
        return "the saving is simulated: fake quantization holds dequantized floats, so nothing shrinks in memory"
    if kind == "none":
        return "no memory is saved: the weights are held dense (a mask or cast that keeps the original size)"
    quant = (result["config"].get("quant") or {})
    if quant.get("method") in ("fp16", "bf16"):
        return f"the saving is real: weights are stored as {quant['method']}"
    if quant:
        return "the saving is real: weights are stored as packed integer codes plus fp16 scales"
    return "the saving is real: pruned layers are stored as a bitmask plus their non-zero values"


def table_saving_phrase(table) -> str:
    """The same for a table of runs (a sweep or the store), counting simulated rows."""
    if table.empty or "simulated" not in table:
        return "stored sizes are the bytes of the tensors each compressed model holds"
    simulated = int(table["simulated"].astype(bool).sum())
    if simulated == 0:
        return ("stored sizes are real: the bytes of the tensors each compressed model holds "
                "(packed codes, scales, masks)")
    return (f"{simulated} of {len(table)} points use fake quantization: their memory saving is simulated, "
            "the rest are real stored bytes")
