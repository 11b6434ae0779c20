"""The number formats memopt stores besides its integer grid: one entry point for each operation.

``quantize_format(w, name, ...)`` -> :class:`StoredWeight`; ``dequantize_format(stored)``;
``format_levels(stored, index)`` (the values one block can take, for histograms);
``format_nbytes(name, out, in, ...)`` (closed-form stored bytes, for the planner; equal to
``quantize_format(...).nbytes``).
"""
from __future__ import annotations

import torch

from memopt_core.primitives.formats.info import FORMAT_INFO
from memopt_core.primitives.formats.fp8 import dequantize_fp8, fp8_levels, quantize_fp8
from memopt_core.primitives.formats.ggml_blocks import LEGACY_BLOCK
from memopt_core.primitives.formats.kquants import KQUANTS, SUPERBLOCK, dequantize_kquant, kquant_levels, \
    layout_for, quantize_kquant
from memopt_core.primitives.formats.microscaling import (MX_BLOCK, NV_BLOCK, dequantize_microscaling,
                                                         microscaling_levels, quantize_mxfp4, quantize_nvfp4)
from memopt_core.primitives.formats.nf4 import BLOCK as NF4_BLOCK
from memopt_core.primitives.formats.nf4 import STATS_BLOCK, dequantize_nf4, nf4_levels, quantize_nf4
from memopt_core.primitives.formats.stored import StoredWeight


FORMAT_NAMES = tuple(FORMAT_INFO)
_LEGACY_TYPE_SIZE = {"q5_0": 22, "q8_0": 34, "iq4_nl": 18}
_LAYOUT_ELEMENT_BITS = {"q5_0": 5, "q8_0": 8, "iq4_nl": 4, "f16": 16}


def quantize_format(w: torch.Tensor, name: str, double_quant: bool = False, per_channel: bool = True) -> StoredWeight:
    """``w [out, in]`` (not changed) stored in format ``name``. ``double_quant``: NF4's scales
    quantized too; ``per_channel``: FP8 scale per output row (else one per tensor)."""
    if name == "nf4":
        return quantize_nf4(w, double_quant)
    if name.startswith("fp8-"):
        return quantize_fp8(w, name.removeprefix("fp8-"), per_channel)
    if name == "mxfp4":
        return quantize_mxfp4(w)
    if name == "nvfp4":
        return quantize_nvfp4(w)
    if name in KQUANTS:
        return quantize_kquant(w, name)
    raise ValueError(f"format {name!r} is not supported; choose {', '.join(FORMAT_NAMES)}")


def dequantize_format(stored: StoredWeight) -> torch.Tensor:
    """Stored weight -> float32 ``[out, in]`` (a new tensor)."""
    if stored.format == "nf4":
        return dequantize_nf4(stored)
    if stored.format.startswith("fp8-"):
        return dequantize_fp8(stored)
    if stored.format in ("mxfp4", "nvfp4"):
        return dequantize_microscaling(stored)
    return dequantize_kquant(stored)


def format_levels(stored: StoredWeight, index: int = 0) -> torch.Tensor:
    """Values the ``index``-th block (row for FP8) can take, ascending float32."""
    if stored.format == "nf4":
        return nf4_levels(stored, index)
    if stored.format.startswith("fp8-"):
        return fp8_levels(stored, index)
    if stored.format in ("mxfp4", "nvfp4"):
        return microscaling_levels(stored, index)
    return kquant_levels(stored, index)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def format_nbytes(name: str, out_features: int, in_features: int, double_quant: bool = False,
                  per_channel: bool = True) -> int:
    """Bytes a ``[out, in]`` weight takes in ``name``, in closed form (equals the stored bytes)."""
    n = out_features * in_features
    if name == "nf4":
        blocks = _ceil(n, NF4_BLOCK)
        scales = blocks + 4 * _ceil(blocks, STATS_BLOCK) + 4 if double_quant else 4 * blocks
        return _ceil(n, 2) + scales
    if name.startswith("fp8-"):
        return n + 4 * (out_features if per_channel else 1)
    if name == "mxfp4":
        return _ceil(n, 2) + _ceil(n, MX_BLOCK)
    if name == "nvfp4":
        return _ceil(n, 2) + _ceil(n, NV_BLOCK) + 4
    if name in KQUANTS:
        layout = layout_for(name, in_features)
        if layout in KQUANTS:
            return n // SUPERBLOCK * KQUANTS[layout].type_size
        return 2 * n if layout == "f16" else n // LEGACY_BLOCK * _LEGACY_TYPE_SIZE[layout]
    raise ValueError(f"format {name!r} is not supported; choose {', '.join(FORMAT_NAMES)}")


def format_value_bits(name: str, in_features: int) -> int:
    """Bits of one stored value (scales apart) for a ``name`` weight with rows of ``in_features``:
    the format's element bits, or its fallback layout's for k-quants on narrow rows."""
    if name in KQUANTS:
        layout = layout_for(name, in_features)
        return _LAYOUT_ELEMENT_BITS.get(layout, FORMAT_INFO[name].element_bits)
    return FORMAT_INFO[name].element_bits
