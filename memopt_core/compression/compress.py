"""Build a compressed copy of a model: prune, then quantize, leaving the original untouched.

The copy is structural: modules are new, tensors are shared with the original until a walker
replaces them. Walkers never write into an existing tensor, so the original stays bit-identical
and the copy costs only the memory of what compression creates.
"""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from memopt_core.compression.calibration_data import CalibrationSet
from memopt_core.config import RunConfig
from memopt_core.errors import ConfigError
from memopt_core.compression.layers import SparseLinear
from memopt_core.primitives.quant import sqnr_db
from memopt_core.compression.prune import prune_
from memopt_core.compression.quantize import quantize_
from memopt_core.compression.walk import effective_weight, set_module, target_linears


def structural_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer with ``model``."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared)


@dataclass
class CompressedModel:
    model: nn.Module
    target_names: list[str]
    simulated: bool
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # what the calibrated methods used (texts, N, L, seed, options)


def store_sparse_(model: nn.Module, names: list[str]) -> int:
    """Hold each pruned Linear as bitmask + non-zero values where that is smaller (in place).

    Returns how many layers were converted."""
    converted = 0
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear) and SparseLinear.is_smaller(module.weight):
            set_module(model, name, SparseLinear.from_linear(module))
            converted += 1
    return converted


def _calibrated(model: nn.Module, config: RunConfig, names: list[str],
                calibration: CalibrationSet | Callable[[], CalibrationSet] | None, gptq) -> CompressedModel:
    """GPTQ / Wanda / SparseGPT: compression block by block from calibration statistics."""
    from memopt_core.compression.calibrate import compress_calibrated_

    if calibration is None:
        raise ConfigError("GPTQ, Wanda and SparseGPT need calibration data; pass calibration= "
                          "(memopt_core.compression.calibration_data.calibration_set; runner.Workbench does this)")
    data = calibration() if callable(calibration) else calibration
    report = compress_calibrated_(model, config, names, data.tokens, gptq)
    timings = {f"calibration_{k}" if k != "calibrate_s" else k: v for k, v in report.timings.items()}
    if config.prune is not None and config.quant is None:
        start = time.perf_counter()
        store_sparse_(model, names)
        timings["sparse_storage_s"] = time.perf_counter() - start
    simulated = config.quant is not None and config.quant.storage == "fake"
    return CompressedModel(model=model, target_names=names, simulated=simulated, timings=timings,
                           calibration={**data.description, "solver": report.options})


def compress_copy(original: nn.Module, config: RunConfig,
                  calibration: CalibrationSet | Callable[[], CalibrationSet] | None = None,
                  gptq=None) -> CompressedModel:
    """Prune then quantize a structural copy of ``original`` as ``config`` says (original unchanged).

    Configs that need calibration (GPTQ, Wanda, SparseGPT) take their tokens from ``calibration``
    (a CalibrationSet or a function returning one, called only when needed) and solver settings
    from ``gptq`` (a :class:`memopt_core.primitives.gptq.GPTQOptions`; default act-order on)."""
    model = structural_copy(original)
    names = list(target_linears(model, config.targets))
    if config.needs_calibration:
        with torch.inference_mode(False), torch.no_grad():
            return _calibrated(model, config, names, calibration, gptq)
    timings: dict[str, float] = {}
    simulated = False
    with torch.inference_mode(False), torch.no_grad():
        if config.prune is not None:
            start = time.perf_counter()
            prune_(model, config.prune, names)
            timings["prune_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if config.quant is not None:
            quantize_(model, config.quant, names, pruned=config.prune is not None)
            simulated = config.quant.storage == "fake"
            timings["quantize_s"] = time.perf_counter() - start
        elif config.prune is not None:
            store_sparse_(model, names)
            timings["sparse_storage_s"] = time.perf_counter() - start
    return CompressedModel(model=model, target_names=names, simulated=simulated, timings=timings)


def layer_errors(original: nn.Module, compressed: nn.Module, names: list[str]) -> dict[str, float]:
    """SQNR (dB) of each compressed layer's effective weight against the original weight."""
    return {name: sqnr_db(effective_weight(original.get_submodule(name)).float(),
                          effective_weight(compressed.get_submodule(name)).float()) for name in names}
