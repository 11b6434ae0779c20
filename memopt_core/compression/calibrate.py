"""Calibrated compression: statistics block by block, then GPTQ, Wanda or SparseGPT on each layer.

The walk (as in the GPTQ reference code): run the calibration tokens up to the first transformer
block and keep its inputs (hidden states plus the arguments the model passed, e.g. Llama's
rotary ``position_embeddings`` and attention mask); then, for each block:

run the whole calibration batch through the block ONCE with its target Linears replaced by
stand-ins. When a stand-in is first called it takes its input ``X``'s statistics (``2/n X^T X``
for GPTQ and SparseGPT, squared column norms for Wanda; float32), compresses its layer (prune,
then quantize), puts the compressed layer in the model and returns its output. So every layer
calibrates on the outputs of the compressed layers before it, in its own block and in earlier
blocks ("true sequential" in the GPTQ reference), and the block's output is the next block's input.

Cost: one forward of the calibration tokens per block, plus the statistics and the solves. Memory:
the activations of all calibration tokens through one block (SmolLM2-135M, 64 x 512 tokens:
under 1 GiB). Like every walker, this one never writes into a tensor the model holds: compressed
layers are new modules.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from memopt_core.compression.calibration_data import BlockInputs, LayerStatistics, capture_block_inputs, forward_block
from memopt_core.compression.layers import QuantLinear, RotatedLinear, copy_bias, dense_linear
from memopt_core.primitives.formats.hadamard import random_signs, rotate_hessian, rotate_weight
from memopt_core.compression.prune import prune_
from memopt_core.compression.quantize import quantize_, store_quantized_
from memopt_core.compression.walk import effective_weight, find_blocks, set_module
from memopt_core.config import PruneConfig, QuantConfig, SolverConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.gptq import gptq_quantize
from memopt_core.primitives.quant import QuantizedWeight
from memopt_core.primitives.sparsegpt import sparsegpt_prune
from memopt_core.primitives.wanda import input_sq_norms_from_hessian

CALIBRATED_PRUNE = ("wanda", "sparsegpt")


@dataclass
class CalibrationReport:
    """What a calibrated compression did: per-layer info and where the time went."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def _store_quantized(model: nn.Module, name: str, qw: QuantizedWeight, source: nn.Module, quant: QuantConfig,
                     keep: Tensor | None, signs: Tensor | None = None) -> dict[str, Any]:
    """Put the packed layer holding ``qw`` (or, for storage 'fake', its dense twin) at ``name``.
    With ``signs``, ``qw`` holds the rotated weight ``W Q`` and the layer rotates its inputs."""
    stored: nn.Module = QuantLinear.from_quantized(qw, copy_bias(source), effective_weight(source).dtype, keep)
    if signs is not None:
        stored = RotatedLinear(stored, signs)
    return store_quantized_(model, name, stored, source, quant)


def _prune_layer(model: nn.Module, name: str, prune: PruneConfig, stats: LayerStatistics,
                 quant: QuantConfig | None, solver: SolverConfig) -> tuple[Tensor, dict[str, Any] | None]:
    """Wanda or SparseGPT on one layer. Returns (keep mask, the stored layer's info when SparseGPT
    already quantized it jointly, else None)."""
    if prune.method == "wanda":
        norms = input_sq_norms_from_hessian(stats.hessian, stats.tokens) if stats.hessian is not None \
            else stats.sq_norms
        return prune_(model, prune, [name], input_sq_norms={name: norms})[name], None
    module = model.get_submodule(name)
    weight = effective_weight(module).detach()  # [out, in]
    joint = quant if quant is not None and quant.method == "gptq" else None
    result = sparsegpt_prune(weight, stats.hessian, prune.ratio, prune.n, prune.m, joint, solver)
    if result.quantized is not None:
        return result.keep, _store_quantized(model, name, result.quantized, module, joint, result.keep)
    set_module(model, name, dense_linear(result.weight, copy_bias(module)))
    return result.keep, None


def _quantize_layer(model: nn.Module, name: str, quant: QuantConfig, stats: LayerStatistics,
                    solver: SolverConfig, keep: Tensor | None) -> dict[str, Any]:
    if quant.method != "gptq":
        return quantize_(model, quant, [name], pruned=keep is not None)[name]
    module = model.get_submodule(name)
    weight = effective_weight(module).detach()  # [out, in]
    if quant.rotate == "hadamard":  # GPTQ in the rotated basis: W Q against the rotated inputs' Q^T H Q
        signs = random_signs(weight.shape[1]).to(weight.device)
        qw = gptq_quantize(rotate_weight(weight.float(), signs), rotate_hessian(stats.hessian, signs), quant, solver)
        return _store_quantized(model, name, qw, module, quant, None, signs)
    qw = gptq_quantize(weight, stats.hessian, quant, solver, keep)
    return _store_quantized(model, name, qw, module, quant, keep)


def compress_layer_(model: nn.Module, name: str, prune: PruneConfig | None, quant: QuantConfig | None,
                    stats: LayerStatistics, solver: SolverConfig, keep: Tensor | None = None) -> dict[str, Any]:
    """Prune (Wanda / SparseGPT) then quantize (GPTQ / RTN / cast) the layer ``name`` of ``model``
    from its calibration statistics; ``keep`` is a mask from an earlier, uncalibrated pruning.
    Replaces the module (in place on ``model``); returns the layer's info."""
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if prune is not None and prune.method in CALIBRATED_PRUNE:
        keep, joint = _prune_layer(model, name, prune, stats, quant, solver)
        if joint is not None:
            return {**joint, "method": "sparsegpt+gptq", "seconds": time.perf_counter() - start}
    if quant is not None:
        info = _quantize_layer(model, name, quant, stats, solver, keep)
    info.update(method="+".join(m for m in (prune.method if prune else None, quant.method if quant else None) if m),
                seconds=time.perf_counter() - start)
    return info


def _needs_hessian(prune: PruneConfig | None, quant: QuantConfig | None) -> bool:
    return (quant is not None and quant.method == "gptq") or (prune is not None and prune.method == "sparsegpt")


def _layers_by_block(model: nn.Module, names: list[str]) -> tuple[nn.ModuleList, list[list[str]]]:
    """The model's blocks and the target names inside each; ConfigError for targets outside them."""
    prefix, blocks = find_blocks(model)
    by_block: list[list[str]] = [[] for _ in blocks]
    outside = []
    for name in names:
        head, _, rest = name.partition(prefix + ".")
        index = rest.split(".", 1)[0] if head == "" and rest else ""
        if index.isdigit() and int(index) < len(blocks):
            by_block[int(index)].append(name)
        else:
            outside.append(name)
    if outside:
        raise ConfigError(f"calibrated methods compress Linears inside the transformer blocks only; "
                          f"{', '.join(outside[:3])} {'is' if len(outside) == 1 else 'are'} outside them")
    return blocks, by_block


def _check_tokens(model: nn.Module, tokens: Tensor) -> None:
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise ConfigError(f"calibration tokens must be a LongTensor [samples, length]; got {tuple(tokens.shape)}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and tokens.shape[1] > limit:
        raise ConfigError(f"calibration length {tokens.shape[1]} exceeds the model's {limit} positions; "
                          f"choose a calibration length of at most {limit}")


def pre_prune(model: nn.Module, prune: PruneConfig | None, names: list[str]) -> dict[str, Tensor]:
    """Uncalibrated pruning (magnitude, global, l2) of ``names`` (in place) before the calibrated
    walk, whose solvers then keep its masks; calibrated pruning happens inside the walk instead."""
    if prune is None or prune.method in CALIBRATED_PRUNE:
        return {}
    return prune_(model, prune, names)


class _StandIn(nn.Module):
    """Takes a target Linear's place while its block runs the calibration batch once. On its first
    call it hands its input to ``compress(name, x)``, which puts the compressed layer in the model
    (replacing this stand-in), and returns that layer's output: the layers after it in the block
    see compressed outputs (GPTQ's "true sequential" order) and each block runs only once."""

    def __init__(self, name: str, original: nn.Module, compress: Callable[[str, Tensor], nn.Module]) -> None:
        super().__init__()
        self.name, self.original, self.compress = name, original, compress
        self.in_features, self.out_features = original.in_features, original.out_features

    @property
    def weight(self) -> Tensor:  # model code may read a projection's weight (e.g. for its dtype)
        return effective_weight(self.original)

    def forward(self, x: Tensor) -> Tensor:
        return self.compress(self.name, x)(x)


class _Walk:
    """Compresses the layers of one block after another (see the module docstring)."""

    def __init__(self, model: nn.Module, prune: PruneConfig | None, quant: QuantConfig | None, solver: SolverConfig,
                 masks: dict[str, Tensor]) -> None:
        self.model, self.prune, self.quant, self.solver, self.masks = model, prune, quant, solver, masks
        self.hessian = _needs_hessian(prune, quant)
        self.report = CalibrationReport(options=dataclasses.asdict(solver))
        self.clock = dict.fromkeys(("capture_s", "statistics_s", "solve_s", "forward_s"), 0.0)
        self.last: tuple[Tensor | None, LayerStatistics | None] = (None, None)

    def compress(self, name: str, x: Tensor) -> nn.Module:
        start = time.perf_counter()
        if self.last[0] is not x:  # q/k/v (gate/up) read the very same tensor: one X^T X serves them
            self.last = (x, LayerStatistics.of(x, self.hessian))
        middle = time.perf_counter()
        set_module(self.model, name, self.model.get_submodule(name).original)
        self.report.layers[name] = compress_layer_(self.model, name, self.prune, self.quant, self.last[1],
                                                   self.solver, self.masks.get(name))
        self.clock["statistics_s"] += middle - start
        self.clock["solve_s"] += time.perf_counter() - middle
        return self.model.get_submodule(name)

    def block(self, block: nn.Module, names: list[str], inputs: BlockInputs) -> BlockInputs:
        """Run the batch through ``block`` once, compressing ``names`` on the way; its output."""
        start, before = time.perf_counter(), self.clock["statistics_s"] + self.clock["solve_s"]
        for name in names:
            set_module(self.model, name, _StandIn(name, self.model.get_submodule(name), self.compress))
        try:
            outputs = forward_block(block, inputs)
        finally:
            unused = [n for n in names if isinstance(self.model.get_submodule(n), _StandIn)]
            for name in unused:
                set_module(self.model, name, self.model.get_submodule(name).original)
            self.last = (None, None)
        if unused:
            raise ConfigError(f"layer {unused[0]!r} received no input during calibration; exclude it from the targets")
        spent = self.clock["statistics_s"] + self.clock["solve_s"] - before
        self.clock["forward_s"] += time.perf_counter() - start - spent
        return outputs


class BlockwiseCalibration:
    """The walk of :func:`compress_calibrated_`, one block per call, for callers that hold one
    block's weights at a time (``memopt_core.offload.sequential``). Block 0's inputs are captured
    at construction, so the model's embeddings must be usable then; each call then needs only its
    block's real weights, and leaves that block's outputs as the next block's inputs."""

    def __init__(self, model: nn.Module, names: list[str], prune: PruneConfig | None, quant: QuantConfig | None,
                 tokens: Tensor, solver: SolverConfig = SolverConfig()) -> None:
        _check_tokens(model, tokens)
        self.blocks, self.by_block = _layers_by_block(model, names)
        self.walk = _Walk(model, prune, quant, solver, {})
        start = time.perf_counter()
        self.inputs = capture_block_inputs(model, self.blocks[0], tokens)
        self.walk.clock["capture_s"] = time.perf_counter() - start
        # Blocks after the last one with targets need no forward: nothing after them is calibrated.
        self.last = max(i for i, layer_names in enumerate(self.by_block) if layer_names)

    @torch.no_grad()
    def compress_block_(self, index: int, masks: dict[str, Tensor]) -> None:
        """Compress the targets of block ``index`` (replaced in the model, in place), keeping the
        ``masks`` of an earlier uncalibrated pruning (:func:`pre_prune`); blocks past the last
        target are skipped."""
        if index > self.last:
            return
        self.walk.masks = masks
        self.inputs = self.walk.block(self.blocks[index], self.by_block[index], self.inputs)

    def report(self) -> CalibrationReport:
        self.walk.report.timings = {**self.walk.clock, "calibrate_s": sum(self.walk.clock.values())}
        return self.walk.report


@torch.no_grad()
def compress_calibrated_(model: nn.Module, names: list[str], prune: PruneConfig | None, quant: QuantConfig | None,
                         tokens: Tensor, solver: SolverConfig = SolverConfig()) -> CalibrationReport:
    """Compress the Linears ``names`` of ``model`` (prune, then quantize), using calibration ``tokens``
    (LongTensor ``[samples, length]``, run as one batch). ``model`` changes in place (modules
    replaced, no tensor written). Returns per-layer info, timings and the solver settings."""
    _check_tokens(model, tokens)
    _layers_by_block(model, names)  # refuse targets outside the blocks before any layer is pruned
    masks = pre_prune(model, prune, names)  # all layers at once: a global threshold needs them all
    walk = BlockwiseCalibration(model, names, prune, quant, tokens, solver)
    for index in range(len(walk.blocks)):
        walk.compress_block_(index, masks)
    return walk.report()
