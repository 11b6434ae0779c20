"""Data for the weight-histogram teaching view: one layer of the original, compressed alone with
the engine's own code, and the quantization grid of its first group (pure torch, no Streamlit)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from memopt_core.compression.compress import compress_copy
from memopt_core.compression.walk import effective_weight
from memopt_core.config import QuantConfig, RunConfig, TargetConfig
from memopt_core.primitives.formats.hadamard import absmax_to_rms, random_signs, rotate_weight
from memopt_core.primitives.formats.registry import format_levels, quantize_format
from memopt_core.primitives.quant import dequantize_codes, quantize_weight, weight_clip_ratio

MAX_POINTS = 20_000  # enough for a smooth histogram, small enough to send to a browser


@dataclass
class LayerWeights:
    layer: str
    before: list[float]  # a sample of the original weights
    after: list[float]  # the same positions after compression
    grid: list[float]  # levels of the first group's (block's) grid; empty without quantization
    numel: int
    sampled: int
    rotated: list[float] = field(default_factory=list)  # the same positions of W Q when rotation is on
    clip: list[float] = field(default_factory=list)  # the first group's clipped range (histogram ranges)
    absmax_to_rms: tuple[float, float] | None = None  # rows' mean absmax/RMS before and after rotation


def grid_levels(weight: torch.Tensor, quant: QuantConfig) -> list[float]:
    """Every value the first group (block) of ``weight [out, in]`` can take under ``quant``, ascending."""
    if quant.format != "int":
        stored = quantize_format(weight, quant.format, quant.double_quant, quant.granularity == "per-channel")
        return format_levels(stored, 0).tolist()
    qw = quantize_weight(weight, quant)
    levels = 2 ** quant.bits
    codes = torch.arange(levels, dtype=torch.uint8).reshape(1, levels)  # [1, levels]: one group of every code
    scale = qw.scale[:1, :1]
    zero = None if qw.zero is None else qw.zero[:1, :1]
    values = dequantize_codes(codes, scale, zero, quant.bits, levels, qw.zero_kind)
    return sorted(set(values.flatten().tolist()))


def _compressed_weight(bench, config: RunConfig, layer: str) -> torch.Tensor:
    """``layer``'s effective weight after compressing a copy in which only that layer is targeted
    (calibrated methods get the workbench's calibration tokens, as in a full run)."""
    one_layer = dataclasses.replace(config, targets=TargetConfig(include=(layer,)))
    calibration = bench.calibration(one_layer) if one_layer.needs_calibration else None
    compressed = compress_copy(bench.loaded.model, one_layer, calibration=calibration)
    return effective_weight(compressed.model.get_submodule(layer)).detach().float().cpu()


def layer_weights(bench, config: RunConfig, layer: str, max_points: int = MAX_POINTS) -> LayerWeights:
    """Before/after values of ``layer`` (the same random positions, fixed seed) and its grid.

    ``bench`` is a :class:`memopt_core.runs.workbench.Workbench`; its original is not changed:
    compression works on a structural copy."""
    before = effective_weight(bench.loaded.model.get_submodule(layer)).detach().float().cpu()  # [out, in]
    after = _compressed_weight(bench, config, layer)
    numel = before.numel()
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(numel, generator=generator)[:max_points] if numel > max_points else torch.arange(numel)
    view = LayerWeights(layer=layer, before=before.flatten()[index].tolist(), after=after.flatten()[index].tolist(),
                        grid=[], numel=numel, sampled=len(index))
    quant = config.quant
    if quant is not None and not quant.is_cast:
        pruned = before
        if config.prune is not None:
            pruned = _compressed_weight(bench, dataclasses.replace(config, quant=None), layer)
        _add_grid(view, pruned, quant, index)
    return view


def _add_grid(view: LayerWeights, weight: torch.Tensor, quant: QuantConfig, index: torch.Tensor) -> None:
    """The grid of the first group of the weight the quantizer sees (rotated, when rotation is on),
    its clipped range for histogram ranges, and the rotation's effect on the rows."""
    if quant.rotate == "hadamard":
        rotated = rotate_weight(weight, random_signs(weight.shape[1]))
        view.rotated = rotated.flatten()[index].tolist()
        view.absmax_to_rms = (absmax_to_rms(weight).mean().item(), absmax_to_rms(rotated).mean().item())
        weight = rotated
    view.grid = grid_levels(weight, quant)
    if quant.format == "int" and quant.range_method in ("percentile", "entropy"):
        ratio = weight_clip_ratio(weight, quant)
        first = weight.reshape(1, -1) if quant.granularity == "per-tensor" else weight[:1, :quant.effective_group_size]
        low, high = first.min().item(), first.max().item()
        if quant.symmetric:
            high = max(abs(low), abs(high))
            low = -high
        view.clip = [ratio * low, ratio * high]
