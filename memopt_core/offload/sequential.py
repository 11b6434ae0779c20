"""Compressing a model one transformer block at a time, holding one block's weights at most.

On a model dispatched under a memory cap (:func:`memopt_core.offload.streamed.load_streamed`), each
block in turn is read from disk (``onload_``), pruned and quantized, written as one shard of the
output folder (packed codes, fp16 scales, masks: what it really stores) and dropped (``release_``);
the parts outside the blocks (embeddings, final norm, head) follow, one at a time. RTN and
magnitude work layer by layer with the same walkers as in memory (``prune_``, ``quantize_``,
``store_sparse_``); GPTQ, Wanda and SparseGPT go through
:class:`memopt_core.compression.calibrate.BlockwiseCalibration`, whose inputs for a block are the
previous block's outputs on the calibration tokens (llm-compressor's sequential pipeline). Same
functions, same inputs: the codes equal the in-memory route's.

The original is consumed: every part is released once written. ``magnitude-global`` needs every
layer at once for its single threshold, so it is refused here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memopt_core.compression.calibrate import BlockwiseCalibration, pre_prune
from memopt_core.compression.calibration_data import CalibrationSet
from memopt_core.compression.compress import compress_layers_, store_sparse_
from memopt_core.compression.layers import weight_storage_bytes
from memopt_core.compression.memory import LayerMemory, release_freed_heap
from memopt_core.compression.sparsity import layer_sparsity
from memopt_core.compression.walk import effective_weight, find_blocks, target_linears
from memopt_core.config import RunConfig
from memopt_core.errors import ConfigError
from memopt_core.loading.saved import compressed_specs
from memopt_core.offload.shards import ShardWriter
from memopt_core.offload.streamed import StreamedModel, onload_, release_
from memopt_core.primitives.quant import sqnr_db


@dataclass
class SequentialResult:
    """What the block-by-block compression wrote: per-layer rows (as a run's ``layers``), their
    memory, the specs of the compressed modules (for ``memopt.json``) and where the time went."""

    target_names: list[str]
    layers: list[dict[str, Any]] = field(default_factory=list)
    memory: list[LayerMemory] = field(default_factory=list)
    modules: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    simulated: bool = False


@dataclass
class _Before:
    """A target layer as it was before compression: its weight ``[out, in]`` and stored bytes."""

    weight: torch.Tensor
    dense_bytes: int


def snapshot(model: nn.Module, names: list[str]) -> dict[str, _Before]:
    """The weights of ``names`` before compression (walkers put new tensors in place, so these stay)."""
    return {n: _Before(effective_weight(model.get_submodule(n)).detach(), weight_storage_bytes(model.get_submodule(n)))
            for n in names}


def layer_rows(before: dict[str, _Before], model: nn.Module) -> tuple[list[dict[str, Any]], list[LayerMemory]]:
    """Rows of the layers ``before`` names, now compressed in ``model``: sparsity, bits and bytes
    stored, SQNR against the weight before compression (the keys of a run's ``layers``)."""
    rows = layer_sparsity(model, list(before))
    memory = []
    for row in rows:
        old, new = before[row["name"]], model.get_submodule(row["name"])
        stored = weight_storage_bytes(new)
        memory.append(LayerMemory(name=row["name"], shape=row["shape"], dense_bytes=old.dense_bytes,
                                  stored_bytes=stored, bits_per_weight=8 * stored / row["numel"]))
        row.update(bits=memory[-1].bits_per_weight, stored_bytes=stored, dense_bytes=old.dense_bytes,
                   sqnr_db=sqnr_db(old.weight.float(), effective_weight(new).float()))
    return rows, memory


def check_supported(config: RunConfig) -> None:
    """ConfigError for settings that need every layer at once (before anything is loaded)."""
    if config.prune is not None and config.prune.method == "magnitude-global":
        raise ConfigError("magnitude-global ranks every layer at once, so it cannot run layer by layer; "
                          "choose magnitude (per layer), or run without --max-memory")


def _parts(streamed: StreamedModel, prefix: str, count: int) -> list[str]:
    """The modules written one shard each: the blocks in order, then the rest holding any tensor."""
    model = streamed.loaded.model
    blocks = [f"{prefix}.{i}" for i in range(count)]
    rest = [name for name in streamed.device_map if name != "" and not name.startswith(prefix + ".")
            and model.get_submodule(name).state_dict()]
    return blocks + rest


class _Compressor:
    """Compresses the targets of one part at a time, calibrated or not (see the module docstring)."""

    def __init__(self, model: nn.Module, config: RunConfig, names: list[str],
                 calibration: CalibrationSet | None) -> None:
        self.model, self.config, self.names = model, config, names
        self.walk = None
        if config.needs_calibration:
            if calibration is None:
                raise ConfigError("GPTQ, Wanda and SparseGPT need calibration data; pass calibration=")
            self.walk = BlockwiseCalibration(model, names, config.prune, config.quant, calibration.tokens,
                                             config.calib.solver)

    def part_(self, names: list[str], block: int | None) -> None:
        """Compress ``names`` (all inside block ``block``, or outside the blocks when None) in place."""
        config, model = self.config, self.model
        if self.walk is None:  # the in-memory road, on this part's layers (per-layer methods only)
            compress_layers_(model, names, config.prune, config.quant)
            return
        if block is not None:
            self.walk.compress_block_(block, pre_prune(model, config.prune, names))
        if config.prune is not None and config.quant is None:
            store_sparse_(model, names)


def _tensors_to_write(model: nn.Module, part: str, tied: list[list[str]], written: dict[str, str]) -> dict:
    """The part's persistent tensors, less tied ones whose twin is already written (stored once)."""
    tensors = model.get_submodule(part).state_dict(prefix=f"{part}.")
    twins = {name: group for group in tied for name in group}
    return {name: t for name, t in tensors.items() if not any(n in written for n in twins.get(name, ()) if n != name)}


def _part_(streamed: StreamedModel, compressor: _Compressor, part: str, block: int | None,
            writer: ShardWriter, result: SequentialResult, clock: dict[str, float]) -> None:
    """Read the module ``part``, compress its targets, add their rows to ``result``, write it as
    the next shard and drop it (all in place)."""
    model, began = streamed.loaded.model, time.perf_counter()
    onload_(model, part, streamed.index, streamed.device)
    names = [n for n in compressor.names if n.startswith(part + ".")]
    before = snapshot(model, names)
    loaded = time.perf_counter()
    compressor.part_(names, block)
    rows, memory = layer_rows(before, model)
    result.layers += rows
    result.memory += memory
    result.modules.update(compressed_specs(model, names))
    compressed = time.perf_counter()
    writer.write(_tensors_to_write(model, part, streamed.tied, writer.weight_map))
    release_(model, part)
    release_freed_heap()  # else the heap keeps every block's freed pages: RSS would grow block by block
    clock["onload_s"] += loaded - began
    clock["compress_s"] += compressed - loaded
    clock["write_s"] += time.perf_counter() - compressed


@torch.no_grad()
def compress_sequential(streamed: StreamedModel, config: RunConfig, folder: Path,
                        calibration: CalibrationSet | None = None) -> SequentialResult:
    """Compress ``streamed``'s model as ``config`` says, block by block, into ``folder`` (sharded
    safetensors; no config or manifest: the caller adds those). Consumes the model (its tensors
    are released as they are written). Calibrated methods take ``calibration``'s tokens and the
    solver settings of ``config.calib``."""
    check_supported(config)
    model = streamed.loaded.model
    names = list(target_linears(model, config.targets))
    prefix, blocks = find_blocks(model)
    start = time.perf_counter()
    compressor = _Compressor(model, config, names, calibration)  # captures block 0's inputs
    result = SequentialResult(target_names=names)
    clock = {"calibration_capture_s": time.perf_counter() - start, "onload_s": 0.0, "compress_s": 0.0,
             "write_s": 0.0}
    parts = _parts(streamed, prefix, len(blocks))
    writer = ShardWriter(folder, len(parts))
    for index, part in enumerate(parts):
        _part_(streamed, compressor, part, index if index < len(blocks) else None, writer, result, clock)
    writer.finish()
    if compressor.walk is not None:
        report = compressor.walk.report()
        clock.update({f"calibration_{k}" if k != "calibrate_s" else k: v for k, v in report.timings.items()})
        result.calibration = {**calibration.description, "solver": report.options}
    result.timings = clock
    result.simulated = config.quant is not None and config.quant.storage == "fake"
    return result
