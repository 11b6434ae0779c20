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
from torch import Tensor, nn

from memopt_core.compression.calibrate import compress_calibrated_
from memopt_core.compression.calibration_data import CalibrationSet
from memopt_core.compression.layers import SparseLinear
from memopt_core.compression.prune import prune_
from memopt_core.compression.quantize import quantize_
from memopt_core.compression.sparsity import sparsity_row
from memopt_core.compression.walk import effective_weight, set_module, target_linears
from memopt_core.config import PruneConfig, QuantConfig, RunConfig, SolverConfig, needs_calibration
from memopt_core.errors import ConfigError
from memopt_core.primitives.quant import sqnr_db


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


def compress_layers_(model: nn.Module, names: list[str], prune: PruneConfig | None, quant: QuantConfig | None,
                     calibration: Tensor | None = None, solver: SolverConfig = SolverConfig()) -> dict[str, Any]:
    """Prune, then quantize, the Linears ``names`` of ``model`` in place (modules replaced, no tensor
    written); a pruned layer left unquantized is held as bitmask + values where that is smaller.

    Calibrated methods (GPTQ, Wanda, SparseGPT) take ``calibration`` tokens ``[samples, length]``
    and the ``solver`` settings. Returns ``{"timings": {...}, "solver": {...} or None}``. The one
    road by which runs, sensitivity and mixed precision compress layers."""
    timings: dict[str, float] = {}
    calibrated = needs_calibration(prune, quant)
    if calibrated and calibration is None:
        raise ConfigError("GPTQ, Wanda and SparseGPT need calibration data; pass calibration tokens "
                          "(memopt_core.compression.calibration_data.calibration_set; the Workbench does this)")
    with torch.inference_mode(False), torch.no_grad():
        if calibrated:
            report = compress_calibrated_(model, names, prune, quant, calibration, solver)
            timings.update({k if k == "calibrate_s" else f"calibration_{k}": v for k, v in report.timings.items()})
        else:
            _timed(timings, "prune_s", prune is not None, lambda: prune_(model, prune, names))
            _timed(timings, "quantize_s", quant is not None, lambda: quantize_(model, quant, names, pruned=prune is not None))
        _timed(timings, "sparse_storage_s", prune is not None and quant is None, lambda: store_sparse_(model, names))
    return {"timings": timings, "solver": report.options if calibrated else None}


def _timed(timings: dict[str, float], key: str, when: bool, step: Callable[[], Any]) -> None:
    if when:
        start = time.perf_counter()
        step()
        timings[key] = time.perf_counter() - start


def compress_copy(original: nn.Module, config: RunConfig,
                  calibration: CalibrationSet | Callable[[], CalibrationSet] | None = None) -> CompressedModel:
    """Prune then quantize a structural copy of ``original`` as ``config`` says (original unchanged).

    Configs that need calibration (GPTQ, Wanda, SparseGPT) take their tokens from ``calibration``
    (a CalibrationSet or a function returning one, called only when needed) and their solver
    settings from ``config.calib.solver``."""
    model = structural_copy(original)
    names = list(target_linears(model, config.targets))
    data = None
    if config.needs_calibration and calibration is not None:
        data = calibration() if callable(calibration) else calibration
    done = compress_layers_(model, names, config.prune, config.quant, None if data is None else data.tokens,
                            config.calib.solver)
    simulated = config.quant is not None and config.quant.storage == "fake"
    described = None if data is None else {**data.description, "solver": done["solver"]}
    return CompressedModel(model=model, target_names=names, simulated=simulated, timings=done["timings"],
                           calibration=described)


@torch.no_grad()
def layer_figures(original: nn.Module, compressed: nn.Module, names: list[str]) -> list[dict]:
    """One row per named layer of ``compressed``, in order: its ``layer_sparsity`` row and
    ``sqnr_db``, the SQNR (dB) of its effective weight against the original's, each compressed
    weight rebuilt once for both (unpacking the codes was half of the time these figures took)."""
    rows = []
    for name in names:
        weight = effective_weight(compressed.get_submodule(name))  # [out, in]
        row = sparsity_row(name, weight)
        row["sqnr_db"] = sqnr_db(effective_weight(original.get_submodule(name)).float(), weight.float())
        rows.append(row)
    return rows
