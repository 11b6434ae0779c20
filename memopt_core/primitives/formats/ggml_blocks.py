"""llama.cpp's blocks of 32 that k-quants fall back to: Q5_0, Q8_0, IQ4_NL, and plain F16
(pure tensor functions).

Each row is cut into blocks of 32 with one fp16 scale ``d``:

- **Q5_0**: ``d = max / -16`` (``max``: the value of largest magnitude, signed),
  ``q = min(31, trunc(x / d + 16.5))``, ``w' = (q - 16) * d``: 5.5 bpw;
- **Q8_0**: ``d = absmax / 127``, ``q = round(x / d)`` (half away from zero), ``w' = q * d``: 8.5 bpw;
- **IQ4_NL**: ``w' = d * K[q]`` with the non-linear table ``K`` below; ``d`` is searched as
  llama.cpp's ``quantize_row_iq4_nl_impl`` does (15 trial scales, weighted by ``x^2``, the best
  least-squares scale kept): 4.5 bpw;
- **F16**: the weight cast to fp16: 16 bpw.

Q5_0 and Q8_0 follow ggml's reference rounding step for step (float32, then fp16 ``d``).
"""
from __future__ import annotations

import torch

from memopt_core.primitives.packing import pack_codes, unpack_codes

LEGACY_BLOCK = 32
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
LEGACY_LAYOUTS = ("q5_0", "q8_0", "iq4_nl", "f16")


def _peak(blocks: torch.Tensor) -> torch.Tensor:
    """The signed value of largest magnitude of each block ``[N, 32]`` -> ``[N]`` (first on ties)."""
    return blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _nearest_iq4(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of ``table``; half-way goes to the upper entry (``best_index_int8``)."""
    mid = (table[1:] + table[:-1]) / 2
    return torch.searchsorted(mid, values.contiguous(), side="right")


def _iq4_nl(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IQ4_NL on ``[N, 32]``: (fp16 d ``[N]``, codes uint8 ``[N, 32]``)."""
    table = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=blocks.device)
    weights = blocks * blocks
    peak = _peak(blocks)
    zero = peak.abs() < 1e-15
    peak = torch.where(zero, torch.ones_like(peak), peak)
    best_num = scale = None
    for trial in (None, *range(-7, 8)):  # None: the first guess, d = max / -K[0]
        inverse = -table[0] / peak if trial is None else (trial + table[0]) / peak
        q = table[_nearest_iq4(blocks * inverse[:, None], table)]
        sum_qx, sum_q2 = (weights * q * blocks).sum(-1), (weights * q * q).sum(-1)
        this = sum_qx / torch.where(sum_q2 > 0, sum_q2, torch.ones_like(sum_q2))
        if best_num is None:
            scale, best_num = this, this * sum_qx
            continue
        better = (sum_q2 > 0) & (sum_qx * sum_qx > best_num * sum_q2)
        scale = torch.where(better, this, scale)
        best_num = torch.where(better, this * sum_qx, best_num)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    codes = _nearest_iq4(blocks * _inverse(scale)[:, None], table)
    return scale.half(), codes.to(torch.uint8)


def quantize_legacy(w: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    """``w [out, in]`` (``in`` a multiple of 32 except for f16; not changed) -> stored tensors:
    ``codes`` (packed uint8; int8 for Q8_0) and ``d`` fp16 ``[n_blocks]``, or ``weight`` fp16."""
    if layout == "f16":
        return {"weight": w.detach().half().clone()}
    blocks = w.detach().float().reshape(-1, LEGACY_BLOCK)  # [N, 32]
    if layout == "q5_0":
        d = _peak(blocks) / -16
        codes = torch.trunc(blocks * _inverse(d)[:, None] + 16.5).clamp(0, 31)
        return {"codes": pack_codes(codes.to(torch.uint8), 5), "d": d.half()}
    if layout == "q8_0":
        d = blocks.abs().amax(dim=-1) / 127
        scaled = blocks * _inverse(d)[:, None]
        whole = scaled.abs().floor()  # ggml's roundf: half away from zero, computed as gguf does
        codes = torch.sign(scaled) * (whole + torch.floor(2 * (scaled.abs() - whole)))
        return {"codes": codes.to(torch.int8), "d": d.half()}
    if layout == "iq4_nl":
        d, codes = _iq4_nl(blocks)
        return {"codes": pack_codes(codes, 4), "d": d}
    raise ValueError(f"layout {layout!r} is not supported; choose {', '.join(LEGACY_LAYOUTS)}")


def _block_values(tensors: dict[str, torch.Tensor], layout: str, numel: int) -> torch.Tensor:
    """The per-weight multiplier of ``d``: float32 ``[numel]``."""
    if layout == "q5_0":
        return unpack_codes(tensors["codes"], 5, numel).float() - 16
    if layout == "q8_0":
        return tensors["codes"].float()
    table = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=tensors["codes"].device)
    return table[unpack_codes(tensors["codes"], 4, numel).long()]


def dequantize_legacy(tensors: dict[str, torch.Tensor], layout: str, shape: tuple[int, int]) -> torch.Tensor:
    """Stored tensors of ``layout`` -> float32 ``shape``."""
    if layout == "f16":
        return tensors["weight"].float()
    numel = shape[0] * shape[1]
    values = _block_values(tensors, layout, numel).reshape(-1, LEGACY_BLOCK)
    return (tensors["d"].float()[:, None] * values).reshape(shape)


def legacy_levels(tensors: dict[str, torch.Tensor], layout: str, block_index: int = 0) -> torch.Tensor:
    """The values block ``block_index`` can take, ascending (empty for F16: no grid)."""
    if layout == "f16":
        return torch.empty(0)
    codes = {"q5_0": torch.arange(32.0) - 16, "q8_0": torch.arange(-127.0, 128.0),
             "iq4_nl": torch.tensor(IQ4_NL_VALUES, dtype=torch.float32)}[layout]
    return (tensors["d"][block_index].float() * codes).unique()
