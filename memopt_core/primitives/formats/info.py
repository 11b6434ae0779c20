"""What the dashboard, the CLI and the planner say about each number format (plain data: no torch,
so the dashboard can list formats before anything heavy is imported)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatInfo:
    """What the dashboard and the CLI say about a format."""

    name: str
    title: str
    element_bits: int
    block: int | None  # weights sharing one scale (None: per channel / per tensor)
    formula: str


FORMAT_INFO = {info.name: info for info in (
    FormatInfo("nf4", "NF4 (QLoRA, bitsandbytes)", 4, 64,
               "w' = NF4[code] * absmax(block of 64); NF4 = 16 quantiles of N(0, 1) scaled to [-1, 1]"),
    FormatInfo("fp8-e4m3", "FP8 E4M3", 8, None, "w' = fp8_e4m3(w / s) * s, s = absmax / 448 (per channel or tensor)"),
    FormatInfo("fp8-e5m2", "FP8 E5M2", 8, None, "w' = fp8_e5m2(w / s) * s, s = absmax / 57344 (per channel or tensor)"),
    FormatInfo("mxfp4", "MXFP4 (OCP microscaling)", 4, 32,
               "w' = E2M1[code] * 2^X, X = floor(log2(absmax of 32)) - 2 (an E8M0 byte)"),
    FormatInfo("nvfp4", "NVFP4 (NVIDIA)", 4, 16,
               "w' = E2M1[code] * s * g, s = fp8_e4m3(absmax of 16 / 6 / g), g = amax / (6 * 448)"),
    FormatInfo("q2_k", "Q2_K (llama.cpp layout)", 2, 16, "w' = d * sc * q - dmin * m; q 2-bit, sc and m 4-bit per 16"),
    FormatInfo("q3_k", "Q3_K (llama.cpp layout)", 3, 16, "w' = d * sc * q; q in -4..3, sc 6-bit signed per 16"),
    FormatInfo("q4_k", "Q4_K (llama.cpp layout)", 4, 32, "w' = d * sc * q - dmin * m; q 4-bit, sc and m 6-bit per 32"),
    FormatInfo("q6_k", "Q6_K (llama.cpp layout)", 6, 16, "w' = d * sc * q; q in -32..31, sc 8-bit signed per 16"),
)}
