"""FP8 weights (E4M3 or E5M2) with a per-tensor or per-channel fp32 scale (pure tensor functions).

``scale = absmax / fp8_max`` (per tensor, or per output row); the weight is stored as
``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` values of ``w / scale`` (torch's cast: round to
nearest even) and decoded as ``fp8.float() * scale``. As in vLLM and compressed-tensors, the
scales are fp32. 8 bits per weight plus 32 per row (per-channel) or 32 per tensor.
"""
from __future__ import annotations

import torch

from memopt_core.primitives.formats.minifloat import FP8_DTYPES, fp8_max, to_fp8
from memopt_core.primitives.formats.stored import StoredWeight, safe_divisor

KINDS = tuple(FP8_DTYPES)


def quantize_fp8(w: torch.Tensor, kind: str = "e4m3", per_channel: bool = True) -> StoredWeight:
    """``w [out, in]`` (not changed) -> ``values`` fp8 ``[out, in]`` and ``scale`` fp32 ``[out, 1]``
    (per channel) or ``[1, 1]`` (per tensor)."""
    if kind not in FP8_DTYPES:
        raise ValueError(f"fp8 kind {kind!r} is not supported; choose {', '.join(KINDS)}")
    x = w.detach().float()
    absmax = x.abs().amax(dim=1, keepdim=True) if per_channel else x.abs().amax().reshape(1, 1)
    scale = absmax / fp8_max(kind)
    values = to_fp8(x / safe_divisor(scale), kind)
    return StoredWeight(f"fp8-{kind}", tuple(w.shape), {"values": values, "scale": scale},
                        {"kind": kind, "per_channel": per_channel})


def dequantize_fp8(stored: StoredWeight) -> torch.Tensor:
    """Stored FP8 -> float32 ``[out, in]``."""
    return stored.tensors["values"].float() * stored.tensors["scale"]


def fp8_levels(stored: StoredWeight, row: int = 0) -> torch.Tensor:
    """Every finite value row ``row`` can take (all 256 codes times the row's scale), ascending."""
    dtype = FP8_DTYPES[stored.meta["kind"]]
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    codes = codes[torch.isfinite(codes)].unique()
    scale = stored.tensors["scale"]
    return codes * scale[min(row, scale.shape[0] - 1), 0]
