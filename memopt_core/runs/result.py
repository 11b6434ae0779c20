"""What one run reports: the RunResult record, the model's summary and the notes on its figures."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from memopt_core.compression.memory import MemoryReport
from memopt_core.config import RunConfig
from memopt_core.loading.models import LoadedModel


@dataclass
class RunResult:
    """Everything one run measured; ``to_dict`` is the CLI's ``--json`` object."""

    model: dict[str, Any]
    config: RunConfig
    baseline: dict[str, Any]
    compressed: dict[str, Any]
    memory: MemoryReport
    sparsity: float
    layers: list[dict[str, Any]]
    timings: dict[str, float]
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Where the tensors lived (in memory, or layer by layer under a cap: memopt_core.offload) and the
    # compute threads of the process that ran it; never a figure.
    execution: dict[str, Any] = field(default_factory=lambda: {"route": "in-memory",
                                                               "threads": torch.get_num_threads()})

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config.to_dict(), "baseline": self.baseline,
                "compressed": self.compressed, "memory": self.memory.to_dict(), "sparsity": self.sparsity,
                "layers": self.layers, "timings": self.timings, "protocol": self.protocol, "notes": self.notes,
                "execution": self.execution}


def model_summary(loaded: LoadedModel) -> dict[str, Any]:
    return {"name": loaded.name, "label": loaded.label, "source": loaded.source, "kind": loaded.kind,
            "architecture": loaded.architecture, "params": loaded.num_params, "is_random": loaded.is_random,
            "device": loaded.spec.device, "dtype": loaded.spec.dtype}


def run_notes(loaded: LoadedModel, config: RunConfig, memory: MemoryReport) -> list[str]:
    notes = []
    if loaded.is_random:
        notes.append(f"{loaded.name} has random weights: its quality figures show mechanics, not a real model")
    if memory.simulated:
        notes.append("fake quantization: weights are held as dequantized floats, so the memory saving is simulated")
    if config.prune is not None and config.quant is None and memory.bits_per_weight >= memory.dense_bits_per_weight:
        notes.append("pruned weights are held dense (zeros stored): pruning alone saves no memory at this sparsity")
    quant = config.quant
    if quant is not None and not quant.is_cast and quant.zero_point == "float" and not quant.symmetric:
        notes.append("float-minimum grid (GGUF Q4_1): zero is not on the grid, so pruned zeros need a stored mask")
    return notes
