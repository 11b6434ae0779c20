"""Microscaling FP4: MXFP4 (OCP MX v1.0) and NVFP4 (NVIDIA) (pure tensor functions).

Both store E2M1 elements (:mod:`minifloat`), two 4-bit codes per byte (memopt packs them: torch's
``float4_e2m1fn_x2`` is storage only), over the weight flattened in row-major order:

- **MXFP4**: blocks of 32 share one E8M0 scale, a power of two stored as its biased exponent
  (one byte): ``X = floor(log2(absmax)) - 2`` so the block's largest value lands in E2M1's top
  binade [4, 8) (values above 6 saturate). ``w' = E2M1[code] * 2**X``. 4 + 8/32 = 4.25 bpw.
- **NVFP4**: blocks of 16 share an FP8 E4M3 scale, and the tensor one fp32 scale
  ``g = amax / (6 * 448)``: ``s = fp8(block absmax / 6 / g)``, ``w' = E2M1[code] * s * g``.
  4 + 8/16 = 4.5 bpw (plus 32 bits per tensor).
"""
from __future__ import annotations

import torch

from memopt_core.primitives.formats.minifloat import (E2M1_MAX, decode_e2m1, e2m1_table, fp8_max, round_to_e2m1,
                                                      to_fp8)
from memopt_core.primitives.formats.stored import StoredWeight, flat_blocks, safe_divisor, unflatten
from memopt_core.primitives.packing import pack_codes, unpack_codes

MX_BLOCK = 32
NV_BLOCK = 16
E8M0_BIAS = 127


def mx_exponent(absmax: torch.Tensor) -> torch.Tensor:
    """Shared exponent ``floor(log2(absmax)) - 2`` (int32, E8M0's range -127..127; -127 for 0).

    ``frexp`` gives ``absmax = m * 2**e`` with ``m`` in [0.5, 1), so ``floor(log2(absmax)) = e - 1``
    exactly, without rounding of a float log."""
    _, e = torch.frexp(absmax.float())
    exponent = (e - 1 - 2).to(torch.int32)
    return torch.where(absmax > 0, exponent, torch.full_like(exponent, -E8M0_BIAS)).clamp(-E8M0_BIAS, E8M0_BIAS)


def quantize_mxfp4(w: torch.Tensor) -> StoredWeight:
    """``w [out, in]`` (not changed) -> ``codes`` packed uint8 ``[ceil(out*in/2)]`` and ``scale``
    E8M0 biased exponents uint8 ``[n_blocks]``."""
    blocks = flat_blocks(w, MX_BLOCK)  # [n_blocks, 32]
    exponent = mx_exponent(blocks.abs().amax(dim=1))
    codes = round_to_e2m1(torch.ldexp(blocks, -exponent[:, None]))
    tensors = {"codes": pack_codes(codes.reshape(-1)[:w.numel()], 4),
               "scale": (exponent + E8M0_BIAS).to(torch.uint8)}
    return StoredWeight("mxfp4", tuple(w.shape), tensors, {"block": MX_BLOCK})


def mx_scales(stored: StoredWeight) -> torch.Tensor:
    """The blocks' scales ``2**(e - 127)`` as float32 ``[n_blocks]``."""
    exponent = stored.tensors["scale"].to(torch.int32) - E8M0_BIAS
    return torch.ldexp(torch.ones(exponent.shape, device=exponent.device), exponent)


def quantize_nvfp4(w: torch.Tensor) -> StoredWeight:
    """``w [out, in]`` (not changed) -> ``codes`` packed uint8, ``scale`` float8_e4m3fn
    ``[n_blocks]`` and ``global_scale`` fp32 ``[1]``."""
    blocks = flat_blocks(w, NV_BLOCK)  # [n_blocks, 16]
    block_absmax = blocks.abs().amax(dim=1)
    global_scale = (block_absmax.max() / (E2M1_MAX * fp8_max("e4m3"))).reshape(1)
    scale = to_fp8(block_absmax / E2M1_MAX / safe_divisor(global_scale), "e4m3")
    step = scale.float() * global_scale  # [n_blocks]
    codes = round_to_e2m1(blocks / safe_divisor(step)[:, None])
    tensors = {"codes": pack_codes(codes.reshape(-1)[:w.numel()], 4), "scale": scale, "global_scale": global_scale}
    return StoredWeight("nvfp4", tuple(w.shape), tensors, {"block": NV_BLOCK})


def block_steps(stored: StoredWeight) -> torch.Tensor:
    """Each block's multiplier of the E2M1 values, float32 ``[n_blocks]``."""
    if stored.format == "mxfp4":
        return mx_scales(stored)
    return stored.tensors["scale"].float() * stored.tensors["global_scale"]


def dequantize_microscaling(stored: StoredWeight) -> torch.Tensor:
    """Stored MXFP4 or NVFP4 -> float32 ``[out, in]``."""
    block = stored.meta["block"]
    steps = block_steps(stored)
    values = decode_e2m1(unpack_codes(stored.tensors["codes"], 4, stored.numel))
    pad = steps.numel() * block - values.numel()
    values = torch.cat((values, values.new_zeros(pad))) if pad else values
    return unflatten(values.reshape(-1, block) * steps[:, None], stored.shape)


def microscaling_levels(stored: StoredWeight, block_index: int = 0) -> torch.Tensor:
    """The 15 distinct values block ``block_index`` can take, ascending float32."""
    return (e2m1_table() * block_steps(stored)[block_index]).unique()
