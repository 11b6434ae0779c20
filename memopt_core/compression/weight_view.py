"""Data for the weight-histogram teaching view: one layer of the original, compressed alone with
the engine's own code, and the quantization grid of its first group (pure torch, no Streamlit)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from memopt_core.compression.compress import compress_copy
from memopt_core.compression.walk import effective_weight
from memopt_core.config import QuantConfig, RunConfig, TargetConfig
from memopt_core.primitives.quant import dequantize_codes, quantize_weight

MAX_POINTS = 20_000  # enough for a smooth histogram, small enough to send to a browser


@dataclass
class LayerWeights:
    layer: str
    before: list[float]  # a sample of the original weights
    after: list[float]  # the same positions after compression
    grid: list[float]  # levels of the first group's quantization grid; empty without quantization
    numel: int
    sampled: int


def grid_levels(weight: torch.Tensor, quant: QuantConfig) -> list[float]:
    """Every value the first group of ``weight [out, in]`` can take under ``quant``, ascending."""
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
    grid: list[float] = []
    quant = config.quant
    if quant is not None and not quant.is_cast:
        pruned = before
        if config.prune is not None:
            pruned = _compressed_weight(bench, dataclasses.replace(config, quant=None), layer)
        grid = grid_levels(pruned, quant)
    numel = before.numel()
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(numel, generator=generator)[:max_points] if numel > max_points else torch.arange(numel)
    return LayerWeights(layer=layer, before=before.flatten()[index].tolist(), after=after.flatten()[index].tolist(),
                        grid=grid, numel=numel, sampled=len(index))
