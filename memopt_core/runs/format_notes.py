"""What a run says about its number format: the layout each layer really got (k-quants fall back
on rows that are not a multiple of 256) and the notes a reader needs beside the figures."""
from __future__ import annotations

from typing import Any

from torch import nn

from memopt_core.compression.format_layers import FormatLinear, RotatedLinear
from memopt_core.config import QuantConfig


def layer_layout(module: nn.Module) -> str | None:
    """The stored layout of a format layer (``q4_k``, or its fallback ``q5_0`` ...), else None."""
    if isinstance(module, RotatedLinear):
        module = module.inner
    if isinstance(module, FormatLinear):
        return module.meta.get("layout", module.format)
    return None


def fallback_summary(rows: list[dict[str, Any]], requested: str) -> dict[str, list[str]]:
    """Layers whose layout is not ``requested``, grouped by the layout they got."""
    fell_back: dict[str, list[str]] = {}
    for row in rows:
        layout = row.get("layout")
        if layout is not None and layout != requested:
            fell_back.setdefault(layout, []).append(row["name"])
    return fell_back


def format_notes(quant: QuantConfig | None, rows: list[dict[str, Any]]) -> list[str]:
    """Notes on the format of ``quant`` given the per-layer ``rows`` (with their ``layout``)."""
    if quant is None or quant.is_cast:
        return []
    notes = []
    if quant.format in ("mxfp4", "nvfp4"):
        notes.append("E2M1 codes are packed two per byte by memopt: torch's float4_e2m1fn_x2 is a storage type "
                     "without arithmetic")
    if quant.format.startswith("q"):
        notes.append(f"{quant.format.upper()} is memopt's implementation of llama.cpp's layout (the same bytes "
                     "gguf reads; the scale search is memopt's)")
        for layout, names in fallback_summary(rows, quant.format).items():
            notes.append(f"{len(names)} of {len(rows)} layers fell back to {layout.upper()} as llama.cpp does "
                         f"(rows not a multiple of 256), e.g. {names[0]}")
    if quant.rotate == "hadamard":
        notes.append("randomized Hadamard rotation: weights quantized as W Q, inputs rotated by Q^T at run time; "
                     "errors and histograms are shown in the original basis")
    return notes
