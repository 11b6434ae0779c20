"""NF4, the 4-bit NormalFloat of QLoRA / bitsandbytes (pure tensor functions).

Rule (bitsandbytes ``quantize_4bit``): the weight is flattened and cut into blocks of 64; each
block keeps its absmax as fp32 and every value becomes the index of the nearest of 16 levels of
``x / absmax``: ``w' = NF4[code] * absmax``. 4 + 32/64 = 4.5 bits per weight.

The 16 levels are quantiles of N(0, 1) (``create_normal_map``: 8 positive, 7 negative and an exact
zero, the outermost at the 0.9677083 quantile, scaled to [-1, 1]), computed here with
``torch.special.ndtri``.

Double quantization (``compress_statistics=True``): the fp32 absmaxes minus their mean are
quantized blockwise (256 per block, an fp32 absmax each) to 8-bit codes of bitsandbytes' signed
dynamic map; the 4-bit codes still come from the exact absmax. 4 + 8/64 + 32/(64*256) = 4.127 bpw
(plus one fp32 mean per tensor).
"""
from __future__ import annotations

import torch

from memopt_core.primitives.formats.stored import (StoredWeight, flat_blocks, nearest_index, safe_divisor,
                                                   unflatten)
from memopt_core.primitives.packing import pack_codes, unpack_codes

BLOCK = 64
STATS_BLOCK = 256
NORMAL_MAP_OFFSET = 0.9677083


def nf4_table() -> torch.Tensor:
    """The 16 NF4 levels, ascending float32 ``[16]``: -1, ..., 0, ..., 1."""
    positive = torch.special.ndtri(torch.linspace(NORMAL_MAP_OFFSET, 0.5, 9)[:-1].double())  # 8 values
    negative = -torch.special.ndtri(torch.linspace(NORMAL_MAP_OFFSET, 0.5, 8)[:-1].double())  # 7 values
    values = torch.cat((positive, negative, torch.zeros(1, dtype=torch.float64))).sort().values
    return (values / values.max()).float()


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``): 256 ascending
    float32 values in [-1, 1], dense near zero (a sign, an exponent given by the leading zeros
    and a linear fraction in the remaining bits)."""
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2 ** i + 1)
        means = ((boundaries[:-1] + boundaries[1:]) / 2.0) * 10 ** (i - 6)
        data += means.tolist() + (-means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def _quantize_blockwise(x: torch.Tensor, table: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` 1-D float32 -> (codes uint8 ``[len(x)]`` into ``table``, fp32 absmax per block)."""
    blocks = flat_blocks(x, block)  # [n_blocks, block]
    absmax = blocks.abs().amax(dim=1)
    codes = nearest_index(blocks / safe_divisor(absmax)[:, None], table).to(torch.uint8)
    return codes.reshape(-1)[:x.numel()], absmax


def _dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, block: int) -> torch.Tensor:
    """codes uint8 ``[n]`` + absmax ``[ceil(n / block)]`` -> float32 ``[n]``."""
    values = table.to(codes.device)[codes.long()]
    pad = absmax.numel() * block - values.numel()
    values = torch.cat((values, values.new_zeros(pad))) if pad else values
    return (values.reshape(-1, block) * absmax.float()[:, None]).reshape(-1)[:codes.numel()]


def quantize_nf4(w: torch.Tensor, double_quant: bool = False) -> StoredWeight:
    """``w [out, in]`` (not changed) -> stored NF4: ``codes`` packed uint8 ``[ceil(out*in/2)]`` and
    ``absmax`` fp32 ``[n_blocks]``, or with ``double_quant`` ``absmax_codes`` uint8 ``[n_blocks]``,
    ``absmax_scale`` fp32 ``[ceil(n_blocks/256)]`` and ``absmax_mean`` fp32 ``[1]``."""
    table = nf4_table().to(w.device)
    codes, absmax = _quantize_blockwise(w.reshape(-1), table, BLOCK)
    tensors = {"codes": pack_codes(codes, 4)}
    if double_quant:
        mean = absmax.mean()
        stat_codes, stat_absmax = _quantize_blockwise(absmax - mean, dynamic_map().to(w.device), STATS_BLOCK)
        tensors.update(absmax_codes=stat_codes, absmax_scale=stat_absmax, absmax_mean=mean.reshape(1))
    else:
        tensors["absmax"] = absmax
    return StoredWeight("nf4", tuple(w.shape), tensors, {"block": BLOCK, "double_quant": double_quant})


def block_absmax(stored: StoredWeight) -> torch.Tensor:
    """The fp32 absmax of every block as the layer decodes it (double quantization: approximate)."""
    t = stored.tensors
    if "absmax" in t:
        return t["absmax"]
    return _dequantize_blockwise(t["absmax_codes"], t["absmax_scale"], dynamic_map(), STATS_BLOCK) \
        + t["absmax_mean"]


def dequantize_nf4(stored: StoredWeight) -> torch.Tensor:
    """Stored NF4 -> float32 ``[out, in]``."""
    codes = unpack_codes(stored.tensors["codes"], 4, stored.numel)
    flat = _dequantize_blockwise(codes, block_absmax(stored), nf4_table(), BLOCK)
    return unflatten(flat, stored.shape)


def nf4_levels(stored: StoredWeight, block_index: int = 0) -> torch.Tensor:
    """The 16 values block ``block_index`` can take: ``NF4 * absmax``, ascending float32."""
    return nf4_table() * block_absmax(stored)[block_index].float()
