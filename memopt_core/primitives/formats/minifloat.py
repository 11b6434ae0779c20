"""Small floating-point element types: E2M1 (FP4) rounding and the FP8 casts (pure tensor functions).

E2M1 (OCP Microscaling spec, used by MXFP4 and NVFP4): 1 sign, 2 exponent, 1 mantissa bit, no
infinities or NaN. Its 8 magnitudes are ``0, 0.5, 1, 1.5, 2, 3, 4, 6``; a 4-bit code is
``sign << 3 | magnitude index``. torch has a ``float4_e2m1fn_x2`` dtype but no arithmetic or
casts for it (storage only), so memopt rounds to E2M1 itself and packs two codes per byte.

FP8 E4M3 (max 448) and E5M2 (max 57344) have real torch dtypes with casts: memopt uses them.
"""
from __future__ import annotations

import torch

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitude of codes 0..7
E2M1_MAX = 6.0
# Half-way points between neighbouring magnitudes; at an exact tie, round-to-nearest-even keeps
# the magnitude whose mantissa bit (the code's lowest bit) is 0.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def e2m1_table(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 values of the 4-bit codes, float32 ``[16]`` (code 8 is -0, decoded as 0)."""
    magnitudes = torch.tensor(E2M1_VALUES, device=device)
    return torch.cat((magnitudes, -magnitudes))


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Codes (uint8, shape of ``x``) of the nearest E2M1 value, ties to even, saturating at +-6.

    ``x`` is already divided by its scale; it is not changed. Zero is always code 0 (never -0)."""
    a = x.detach().float().abs()
    mid = torch.tensor(_E2M1_MIDPOINTS, device=a.device)
    index = torch.searchsorted(mid, a.contiguous(), side="left")  # magnitudes below a's ties, in 0..7
    at_tie = (index < len(_E2M1_MIDPOINTS)) & (mid[index.clamp(max=len(_E2M1_MIDPOINTS) - 1)] == a)
    index = index + (at_tie & (index % 2 == 1)).long()  # a tie after an odd code goes up to the even one
    negative = (x < 0) & (index > 0)
    return (index + 8 * negative.long()).to(torch.uint8)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (any shape, values < 16) -> float32 values."""
    return e2m1_table(codes.device)[codes.long()]


def fp8_max(kind: str) -> float:
    """Largest finite value of ``e4m3`` (448) or ``e5m2`` (57344)."""
    return float(torch.finfo(FP8_DTYPES[kind]).max)


def to_fp8(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Cast to ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` (round to nearest even), saturating at
    the largest finite value so no scaled weight becomes inf or NaN. A new tensor."""
    limit = fp8_max(kind)
    return x.detach().float().clamp(-limit, limit).to(FP8_DTYPES[kind])
