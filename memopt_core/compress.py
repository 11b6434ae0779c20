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

import torch
from torch import nn

from memopt_core.config import RunConfig
from memopt_core.layers import SparseLinear
from memopt_core.primitives.quant import sqnr_db
from memopt_core.prune import prune_
from memopt_core.quantize import quantize_
from memopt_core.walk import effective_weight, set_module, target_linears


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


def compress_copy(original: nn.Module, config: RunConfig) -> CompressedModel:
    """Prune then quantize a structural copy of ``original`` as ``config`` says (original unchanged)."""
    model = structural_copy(original)
    names = list(target_linears(model, config.targets))
    timings: dict[str, float] = {}
    simulated = False
    with torch.inference_mode(False), torch.no_grad():
        if config.prune is not None:
            start = time.perf_counter()
            prune_(model, config.prune, names)
            timings["prune_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if config.quant is not None:
            quantize_(model, config.quant, names)
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
