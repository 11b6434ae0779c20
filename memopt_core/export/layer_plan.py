"""What each layer becomes in a format, and why: codes copied, widened, or re-quantized.

For every Linear of a compressed model the plan says which type of the format holds it, whether
the weights written are exactly the ones memopt evaluated, and, when not, what changed. A layer is
only re-quantized where its grid has no counterpart in the format (never silently: ``how`` and
``note`` say so, and the round trip measures the difference).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import nn

from memopt_core.compression.layers import QuantLinear
from memopt_core.compression.walk import effective_weight
from memopt_core.errors import ConfigError
from memopt_core.export.formats import CT_TYPES, GGUF_BLOCK, GGUF_TYPES, FormatType
from memopt_core.export import matmul_nbits
from memopt_core.export.gguf_blocks import BLOCK, BLOCK_BYTES
from memopt_core.primitives.quant import QuantizedWeight, quantize_weight

COPIED, WIDENED, ZERO_ROUNDED, REQUANTIZED, DENSE = "copied", "widened", "zero rounded", "re-quantized", "dense"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class LayerPlan:
    """One layer's fate. ``exact``: the format decodes to memopt's weights (bit for bit, up to the
    float type itself); ``bits_per_weight`` counts scales and minimums of the format."""

    name: str
    source: str
    target: str
    how: str
    exact: bool
    note: str
    bits_per_weight: float
    weights: int = 0  # out * in

    @property
    def bytes(self) -> float:
        """The layer's bytes in the format (codes, scales and minimums; biases apart)."""
        return self.weights * self.bits_per_weight / 8

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes": self.bytes}


def _sized(plan_layer: Callable[..., LayerPlan]) -> Callable[..., LayerPlan]:
    """Fill ``weights`` of the plan a per-layer rule returns (its arguments start with name, module)."""
    @functools.wraps(plan_layer)
    def sized(name: str, module: nn.Module, *args) -> LayerPlan:
        plan = plan_layer(name, module, *args)
        plan.weights = module.in_features * module.out_features
        return plan
    return sized


def grid_of(module: nn.Module) -> QuantizedWeight | None:
    """memopt's codes and parameters of a QuantLinear (None for any other layer)."""
    if not isinstance(module, QuantLinear):
        return None
    group = module.group_size
    return QuantizedWeight(module.codes(), module.scale, module.zero, module.bits, group, module.zero_kind,
                           (module.out_features, module.in_features))


def source_label(module: nn.Module) -> str:
    """``W4A16 g32 asym-fmin``-style name of what a layer holds."""
    grid = grid_of(module)
    if grid is None:
        return f"dense {_DTYPE_NAMES.get(effective_weight(module).dtype, 'float')}"
    in_f = grid.shape[1]
    grain = "per-tensor" if grid.scale.numel() == 1 else ("per-channel" if grid.group_size >= in_f else f"g{grid.group_size}")
    kind = {"symmetric": "sym", "int": "asym", "float": "asym-fmin"}[grid.zero_kind]
    mask = " +mask" if module.mask is not None else ""
    return f"W{grid.bits}A16 {grain} {kind}{mask}"


def _fits_blocks(grid: QuantizedWeight, block: int) -> bool:
    """Whether every block of ``block`` weights lies inside one of the grid's groups."""
    in_f = grid.shape[1]
    return in_f % block == 0 and (grid.scale.numel() == 1 or grid.group_size % block == 0)


def auto_gguf_type(module: nn.Module) -> FormatType:
    """The narrowest GGUF type whose grid holds the layer's codes (dense layers keep their float type)."""
    grid = grid_of(module)
    if grid is None:
        dtype = _DTYPE_NAMES.get(effective_weight(module).dtype, "float32")
        return GGUF_TYPES[{"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]]
    symmetric = grid.zero_kind == "symmetric"
    if grid.bits <= 4:
        return GGUF_TYPES["Q4_0" if symmetric else "Q4_1"]
    if grid.bits == 5:
        return GGUF_TYPES["Q5_0" if symmetric else "Q5_1"]
    return GGUF_TYPES["Q8_0"]


def _same_grid(grid: QuantizedWeight, ftype: FormatType) -> str | None:
    """COPIED / WIDENED / ZERO_ROUNDED when ``ftype``'s grid holds ``grid``'s codes, else None."""
    if grid.bits > ftype.bits:
        return None
    widened = grid.bits < ftype.bits
    if grid.zero_kind == ftype.zero_kind:
        return WIDENED if widened else COPIED
    if grid.zero_kind == "int" and ftype.zero_kind == "float":
        return ZERO_ROUNDED
    return None


@_sized
def gguf_layer_plan(name: str, module: nn.Module, ftype: FormatType) -> LayerPlan:
    """How ``module`` is written as GGUF type ``ftype`` (a ConfigError when no block fits its rows)."""
    in_f = module.in_features
    grid = grid_of(module)
    source = source_label(module)
    if not ftype.is_quantized:
        exact = grid is None and source == f"dense {ftype.dense_dtype}"
        note = "" if exact else f"cast to {ftype.dense_dtype}"
        return LayerPlan(name, source, ftype.name, DENSE, exact, note, float(torch.finfo(_dtype(ftype)).bits))
    if in_f % GGUF_BLOCK:
        raise ConfigError(f"layer {name} has {in_f} inputs: GGUF blocks of {GGUF_BLOCK} do not divide it; "
                          "export it as F16 or F32, or choose the onnx format")
    bpw = _gguf_bpw(ftype.name)
    how = _same_grid(grid, ftype) if grid is not None and _fits_blocks(grid, GGUF_BLOCK) else None
    if how is None:
        why = _requant_reason(grid, ftype, GGUF_BLOCK)
        return LayerPlan(name, source, ftype.name, REQUANTIZED, False, why, bpw)
    notes = {COPIED: "memopt's codes and fp16 scales, bit for bit",
             WIDENED: f"{grid.bits}-bit codes held in {ftype.bits}-bit slots: exact, {bpw:.2f} bpw stored",
             ZERO_ROUNDED: "integer zero point written as the fp16 minimum -zero*scale (rounded to fp16)"}
    exact = how in (COPIED, WIDENED)
    note = notes[how]
    if module.mask is not None:
        exact, note = False, note + "; GGUF has no mask: pruned weights decode to the grid point nearest 0"
    return LayerPlan(name, source, ftype.name, how, exact, note, bpw)


def _requant_reason(grid: QuantizedWeight | None, ftype: FormatType, block: int | None) -> str:
    if grid is None:
        return f"dense weights quantized by memopt's {ftype.quant_config(ftype.group_size or None).label} quantizer"
    if block is not None and not _fits_blocks(grid, block):
        return (f"groups of {grid.group_size} do not align with blocks of {block}: re-quantized by memopt's "
                f"{ftype.quant_config(block).label} quantizer from the evaluated weights")
    return (f"the {grid.bits}-bit {grid.zero_kind} grid has no {ftype.name} counterpart: re-quantized by memopt's "
            f"{ftype.quant_config(ftype.group_size).label} quantizer from the evaluated weights")


def _dtype(ftype: FormatType) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[ftype.dense_dtype]


def _gguf_bpw(type_name: str) -> float:
    return BLOCK_BYTES[type_name] * 8 / BLOCK


def requantized_grid(module: nn.Module, config) -> QuantizedWeight:
    """memopt's quantizer applied to the weights the layer computes with (``module`` unchanged)."""
    return quantize_weight(effective_weight(module).detach().float(), config)


def auto_ct_type(module: nn.Module) -> FormatType | None:
    """The compressed-tensors type for a layer's codes: int4/int8, symmetric or integer zero point."""
    grid = grid_of(module)
    if grid is None:
        return None
    bits = 4 if grid.bits <= 4 else 8
    return CT_TYPES[f"W{bits}A16" + ("" if grid.zero_kind == "symmetric" else "-asym")]


@_sized
def ct_layer_plan(name: str, module: nn.Module, ftype: FormatType, group_size: int | None) -> LayerPlan:
    """How ``module`` is written as compressed-tensors ``ftype`` with ``group_size`` (None: per channel)."""
    grid = grid_of(module)
    in_f = module.in_features
    if group_size is not None and in_f % group_size:
        raise ConfigError(f"layer {name} has {in_f} inputs, not a multiple of group size {group_size}: "
                          "compressed-tensors groups must divide every row; choose another --group-size")
    groups = in_f // (group_size or in_f)
    bpw = ftype.bits + 16 * groups / in_f + (ftype.bits * groups / in_f if ftype.zero_kind == "int" else 0)
    same_groups = grid is not None and grid.scale.numel() > 1 and \
        min(grid.group_size, in_f) == (group_size or in_f) and in_f % min(grid.group_size, in_f) == 0
    how = _same_grid(grid, ftype) if same_groups else None
    if how in (None, ZERO_ROUNDED):
        why = "float minimum has no compressed-tensors field" if grid is not None and grid.zero_kind == "float" else ""
        config = ftype.quant_config(group_size)
        reason = why or (f"{source_label(module)} differs from {config.label}" if grid is not None else "dense weights")
        return LayerPlan(name, source_label(module), ftype.name, REQUANTIZED, False,
                         f"{reason}: re-quantized by memopt's {config.label} quantizer from the evaluated weights", bpw)
    note = "memopt's codes and scales (signed code = code - 2**(bits-1)), exactly"
    if how == WIDENED:
        note = f"{grid.bits}-bit codes held in {ftype.bits}-bit slots: exact"
    exact = module.mask is None
    if not exact:
        note += "; the format has no mask: pruned weights decode to the grid point nearest 0"
    return LayerPlan(name, source_label(module), ftype.name, how, exact, note, bpw)


@_sized
def onnx_layer_plan(name: str, module: nn.Module, ftype: FormatType) -> LayerPlan:
    """What a Linear becomes in the ONNX graph: memopt's weights as float32, or ONNX Runtime's re-quantization."""
    source = source_label(module)
    if not ftype.is_quantized:
        return LayerPlan(name, source, ftype.name, DENSE, True, "memopt's weights as float32 (de-quantized)", 32.0)
    if ftype.memopt_codes:
        return _codes_plan(name, module, ftype)
    if ftype.name == "int8":
        return LayerPlan(name, source, ftype.name, REQUANTIZED, False,
                         "ONNX Runtime dynamic quantization: uint8 per output channel (fp32 scale, uint8 zero "
                         "point), activations quantized at run time", 8 + 40 / module.in_features)
    return LayerPlan(name, source, ftype.name, REQUANTIZED, False,
                     f"ONNX Runtime MatMulNBits: 4-bit symmetric blocks of {ftype.group_size} with fp32 scales",
                     ftype.bits + 32 / ftype.group_size)


def _codes_plan(name: str, module: nn.Module, ftype: FormatType) -> LayerPlan:
    """memopt's codes in MatMulNBits (ConfigError when they do not fit); float Linears stay float32."""
    grid = grid_of(module)
    if grid is None:
        return LayerPlan(name, source_label(module), "fp32", DENSE, True, "left float by memopt: float32 MatMul", 32.0)
    matmul_nbits.check_grid(grid, ftype.bits, name)
    block = matmul_nbits.block_size_for(grid, name)
    zeros = grid.zero_kind == "int"
    how = WIDENED if grid.bits < ftype.bits else COPIED
    note = (f"memopt's codes{' and integer zero points' if zeros else ''} in MatMulNBits blocks of {block}, "
            "memopt's fp16 scales as they are (cast to float32 in the graph)"
            + (f"; {grid.bits}-bit codes in {ftype.bits}-bit slots" if how == WIDENED else ""))
    bpw = matmul_nbits.file_bits_per_weight(grid, ftype.bits)
    return LayerPlan(name, source_label(module), ftype.name, how, module.mask is None, note, bpw)


def kept_float_plan(plan: LayerPlan, zeroed: float | None) -> LayerPlan:
    """``plan`` of a Linear that ONNX Runtime int8 leaves float32: ``zeroed`` of its input (calibration
    tokens) would round to zero under one uint8 scale per tensor; None: ONNX Runtime did not take it
    (its weight is computed in the graph, as a tied lm_head)."""
    why = ("its weight is not a constant of the graph (tied to the embedding), which dynamic quantization skips"
           if zeroed is None else f"activation outliers, one uint8 step would round {zeroed:.0%} of its input to zero")
    return replace(plan, target="fp32", how=DENSE, exact=True, bits_per_weight=32.0,
                   note=f"kept float32 (memopt's weights): {why}")
