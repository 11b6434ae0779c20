"""How a compressed layer computes: the compute dtype, and a fused kernel where it is faster.

A packed layer normally dequantizes its weight to the compute dtype at each forward and calls a
dense matmul. For 8-bit symmetric per-channel codes on the CPU torch has a fused kernel,
``aten._weight_int8pack_mm`` (int8 weight, one scale per output row). Whether it is faster depends
on the CPU and the dtype (on an AVX2 CPU it was about 15x slower than dequantize + matmul in
float32, about even in bfloat16), so it is timed once per layer shape and dtype in this process,
on a small slice of the real input, and used only where it won. Each layer records the kernel it
used in ``kernel``.
"""
from __future__ import annotations

import threading
import time

import torch
import torch.nn.functional as F

FUSED_INT8 = "fused int8 (aten._weight_int8pack_mm)"
DEQUANTIZE = "dequantize + matmul"
_PROBE_ROWS = 32  # input rows timed per path: enough to rank them, cheap when the fused one is slow
_faster: dict[tuple, bool] = {}  # (out, in, dtype, threads) -> fused kernel measured faster
_lock = threading.Lock()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer should produce its weight in: autocast's when it is on, else the input's."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def int8_codes(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Symmetric 8-bit codes (``q + 128`` as uint8) -> int8 ``q`` [out, in]; flipping the top bit is ``- 128``."""
    return (packed ^ 0x80).view(torch.int8).view(shape)


def fused_int8_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``x [..., in]`` @ (int8 ``codes [out, in]`` * ``scale [out, 1]``).T + bias -> ``[..., out]`` in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.aten._weight_int8pack_mm(rows, codes, scale.reshape(-1).to(x.dtype))
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out.view(*x.shape[:-1], codes.shape[0])


def _seconds(fn) -> float:
    fn()  # the first call picks and warms up kernels
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def fused_is_faster(x: torch.Tensor, shape: tuple[int, int], codes, scale: torch.Tensor, dequantize) -> bool:
    """Whether the fused int8 kernel beat ``F.linear(x, dequantize(dtype))`` on this weight ``shape``
    and x's dtype, timed once per process; ``codes()`` gives the int8 weight."""
    key = (*shape, x.dtype, torch.get_num_threads())
    with _lock:
        if key not in _faster:
            probe, codes = x.reshape(-1, x.shape[-1])[:_PROBE_ROWS], codes()
            try:
                fused = _seconds(lambda: fused_int8_linear(probe, codes, scale, None))
            except RuntimeError:  # this build or dtype has no such kernel
                _faster[key] = False
            else:
                _faster[key] = fused < _seconds(lambda: F.linear(probe, dequantize(x.dtype)))
        return _faster[key]


def fused_int8_applies(bits: int, zero_kind: str, scale: torch.Tensor, has_mask: bool, x: torch.Tensor) -> bool:
    """The fused kernel's format: 8-bit symmetric, one scale per output row, no mask, CPU, float input."""
    return (bits == 8 and zero_kind == "symmetric" and scale.dim() == 2 and scale.shape[1] == 1
            and scale.shape[0] > 1 and not has_mask and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and hasattr(torch.ops.aten, "_weight_int8pack_mm"))
