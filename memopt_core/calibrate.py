"""Calibrated compression: collect statistics block by block and apply GPTQ, Wanda or SparseGPT.

The walk (as in the GPTQ reference code): run the calibration tokens up to the first transformer
block and keep its inputs (hidden states plus the arguments the model passed, e.g. Llama's
rotary ``position_embeddings`` and attention mask); then, for each block:

1. forward the block with hooks on its target Linears, accumulating ``X^T X`` (GPTQ, SparseGPT)
   or the squared input-column norms (Wanda) in float32;
2. compress the block's Linears (prune, then quantize);
3. forward the COMPRESSED block to get the next block's inputs, so later blocks calibrate on the
   errors of earlier ones.

Memory stays near one block's activations for the calibration batch. Like every walker, this one
never writes into a tensor the model holds: compressed layers are new modules.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memopt_core.config import PruneConfig, QuantConfig, RunConfig
from memopt_core.errors import ConfigError
from memopt_core.layers import QuantLinear, weight_storage_bytes
from memopt_core.primitives.gptq import GPTQOptions, gptq_quantize
from memopt_core.primitives.packing import pack_codes, pack_mask
from memopt_core.primitives.quant import QuantizedWeight, dequantize, sqnr_db
from memopt_core.primitives.sparsegpt import sparsegpt_prune
from memopt_core.primitives.wanda import input_sq_norms_from_hessian, wanda_scores
from memopt_core.prune import prune_
from memopt_core.quantize import quantize_
from memopt_core.walk import effective_weight, find_blocks, set_module

CALIBRATED_PRUNE = ("wanda", "sparsegpt")


@dataclass
class CalibrationReport:
    """What a calibrated compression did: per-layer info and where the time went."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    """Raised by the capture hook once block 0's inputs are in hand: the rest of the model is skipped."""


@dataclass
class BlockInputs:
    """One calibration batch as a block receives it: ``hidden [B, L, H]`` plus the other arguments
    the model passed (Llama: ``position_embeddings``, ``attention_mask``; BERT: a positional mask)."""

    hidden: Tensor
    args: tuple
    kwargs: dict[str, Any]


def capture_block_inputs(model: nn.Module, first_block: nn.Module, tokens: Tensor,
                         batch_tokens: int = 4096) -> list[BlockInputs]:
    """Run ``tokens [N, L]`` through ``model`` up to ``first_block`` and keep its inputs, per batch."""
    captured: list[BlockInputs] = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(BlockInputs(hidden, tuple(args[1:]), kwargs))
        raise _Stop

    device = next(model.parameters()).device
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in tokens.split(max(1, batch_tokens // tokens.shape[1])):
            try:
                model(input_ids=batch.to(device), **extra)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def forward_block(block: nn.Module, inputs: list[BlockInputs]) -> list[BlockInputs]:
    """The block's outputs as the next block's inputs (same extra arguments)."""
    outputs = []
    for batch in inputs:
        out = block(batch.hidden, *batch.args, **batch.kwargs)
        outputs.append(BlockInputs(out[0] if isinstance(out, tuple) else out, batch.args, batch.kwargs))
    return outputs


class _Collector:
    """Forward pre-hooks that accumulate each layer's input statistics over the calibration batches.

    Layers fed the very same tensor (Llama's q/k/v, gate/up) share one accumulator: ``X^T X`` is the
    costly part. After the first batch, each batch stops right after the last hooked layer has
    its input: the rest of the block (e.g. the MLP's down projection itself) is not needed."""

    def __init__(self, modules: dict[str, nn.Module], hessian: bool) -> None:
        self.hessian = hessian
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.seen: list[tuple[Tensor, str]] = []  # this batch's inputs; held so no address is reused
        self.calls: list[str] = []  # hooked calls of the first batch, in order
        self.stop_at: str | None = None
        self.handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def accumulate(module, args):
            self._add(name, args[0])
            if name == self.stop_at:
                raise _Stop
        return accumulate

    def _add(self, name: str, x: Tensor) -> None:
        if self.stop_at is None:
            self.calls.append(name)
        owner = next((n for t, n in self.seen if t is x), None)
        if owner is not None:
            self.alias[name] = owner
            return
        self.seen.append((x, name))
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, in]
        if name not in self.sums:
            size = (rows.shape[1],) * (2 if self.hessian else 1)
            self.sums[name] = torch.zeros(size, dtype=torch.float32, device=rows.device)
        if self.hessian:
            self.sums[name].addmm_(rows.T, rows)  # [in, in]
        else:
            self.sums[name] += rows.pow(2).sum(0)  # [in]
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]

    def run(self, block: nn.Module, inputs: list[BlockInputs]) -> None:
        try:
            for batch in inputs:
                self.seen.clear()
                try:
                    block(batch.hidden, *batch.args, **batch.kwargs)
                except _Stop:
                    pass
                # Stopping early is safe only when each layer runs once per forward.
                if self.stop_at is None and self.calls and len(set(self.calls)) == len(self.calls):
                    self.stop_at = self.calls[-1]
        finally:
            self.seen.clear()
            for handle in self.handles:
                handle.remove()


@dataclass
class LayerStatistics:
    """One layer's calibration statistics: ``hessian`` ``2/n X^T X [in, in]`` (float32) or
    ``sq_norms`` ``sum_t x_tj^2 [in]``, over ``tokens`` rows of inputs ``X [n, in]``."""

    tokens: int
    hessian: Tensor | None = None
    sq_norms: Tensor | None = None

    @staticmethod
    def collect(block: nn.Module, modules: dict[str, nn.Module], inputs: list[BlockInputs],
                hessian: bool) -> dict[str, "LayerStatistics"]:
        """Forward ``inputs`` through ``block`` with hooks on ``modules``; statistics by layer name
        (layers that read the same tensor get the same object)."""
        collector = _Collector(modules, hessian)
        collector.run(block, inputs)
        return LayerStatistics._finish(modules, collector.sums, collector.counts, collector.alias, hessian)

    @staticmethod
    def _finish(modules, sums, counts, alias, hessian: bool) -> dict[str, "LayerStatistics"]:
        owned = {}
        for name, total in sums.items():
            n = counts[name]
            owned[name] = LayerStatistics(n, hessian=total.mul_(2.0 / n)) if hessian else LayerStatistics(n, sq_norms=total)
        result = {}
        for name in modules:
            owner = name if name in owned else alias.get(name)
            if owner is None:
                raise ConfigError(f"layer {name!r} received no input during calibration; exclude it from the targets")
            result[name] = owned[owner]
        return result


def _bias_of(source: nn.Module) -> nn.Parameter | None:
    bias = getattr(source, "bias", None)
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)


def quant_linear_from(qw: QuantizedWeight, source: nn.Module, keep: Tensor | None = None) -> QuantLinear:
    """A new QuantLinear holding ``qw`` (codes ``[out, in]``) with ``source``'s bias copied.

    ``keep [out, in]``: pruned positions; a mask is stored only when their codes do not decode to 0."""
    out_f, in_f = qw.shape
    dtype = effective_weight(source).dtype
    needs_mask = False
    if keep is not None and not bool(keep.all()):
        needs_mask = bool(dequantize(qw)[~keep].ne(0).any())
    module = QuantLinear(in_f, out_f, qw.bits, qw.group_size, qw.zero_kind, tuple(qw.scale.shape), needs_mask,
                         _bias_of(source), dtype)
    module.packed = pack_codes(qw.codes, qw.bits)
    module.scale = qw.scale.clone()
    module.zero = None if qw.zero is None else qw.zero.clone()
    module.mask = pack_mask(keep) if needs_mask else None
    return module


def _dense_from(weight: Tensor, source: nn.Module) -> nn.Linear:
    """A new nn.Linear holding ``weight [out, in]`` and a copy of ``source``'s bias."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=getattr(source, "bias", None) is not None,
                      device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        layer.bias = _bias_of(source)
    return layer


def _store_quantized(model: nn.Module, name: str, qw: QuantizedWeight, source: nn.Module, source_weight: Tensor,
                     quant: QuantConfig, keep: Tensor | None) -> dict[str, Any]:
    """Put the packed layer (or, for storage 'fake', its dequantized dense twin) at ``name``."""
    stored: nn.Module = quant_linear_from(qw, source, keep)
    bits = weight_storage_bytes(stored) * 8 / source_weight.numel()
    simulated = quant.storage == "fake"
    if simulated:
        stored = _dense_from(stored.dequantized_weight(source_weight.dtype), source)
    set_module(model, name, stored)
    return {"bits": bits, "simulated": simulated, "sqnr_db": sqnr_db(source_weight, effective_weight(stored))}


def _prune_layer(model: nn.Module, name: str, prune: PruneConfig, stats: LayerStatistics,
                 quant: QuantConfig | None, options: GPTQOptions) -> tuple[Tensor, dict[str, Any] | None]:
    """Wanda or SparseGPT on one layer. Returns (keep mask, the stored layer's info when SparseGPT
    already quantized it jointly, else None)."""
    module = model.get_submodule(name)
    weight = effective_weight(module).detach()  # [out, in]
    if prune.method == "wanda":
        norms = input_sq_norms_from_hessian(stats.hessian, stats.tokens) if stats.hessian is not None \
            else stats.sq_norms
        return prune_(model, prune, [name], scores={name: wanda_scores(weight, norms)})[name], None
    joint = quant if quant is not None and quant.method == "gptq" else None
    result = sparsegpt_prune(weight, stats.hessian, prune.ratio, prune.n, prune.m, joint, options)
    if result.quantized is not None:
        return result.keep, _store_quantized(model, name, result.quantized, module, weight, joint, result.keep)
    set_module(model, name, _dense_from(result.weight, module))
    return result.keep, None


def _quantize_layer(model: nn.Module, name: str, quant: QuantConfig, stats: LayerStatistics,
                    options: GPTQOptions, keep: Tensor | None) -> dict[str, Any]:
    if quant.method != "gptq":
        return quantize_(model, quant, [name])[name]
    module = model.get_submodule(name)
    weight = effective_weight(module).detach()  # [out, in]
    qw = gptq_quantize(weight, stats.hessian, quant, options, keep)
    return _store_quantized(model, name, qw, module, weight, quant, keep)


def compress_layer_(model: nn.Module, name: str, config: RunConfig, stats: LayerStatistics,
                    options: GPTQOptions, keep: Tensor | None = None) -> dict[str, Any]:
    """Prune (Wanda / SparseGPT) then quantize (GPTQ / RTN / cast) the layer ``name`` of ``model``
    from its calibration statistics; ``keep`` is a mask from an earlier, uncalibrated pruning.
    Replaces the module (in place on ``model``); returns the layer's info."""
    start = time.perf_counter()
    info: dict[str, Any] = {}
    prune, quant = config.prune, config.quant
    if prune is not None and prune.method in CALIBRATED_PRUNE:
        keep, joint = _prune_layer(model, name, prune, stats, quant, options)
        if joint is not None:
            return {**joint, "method": "sparsegpt+gptq", "seconds": time.perf_counter() - start}
    if quant is not None:
        info = _quantize_layer(model, name, quant, stats, options, keep)
    info.update(method="+".join(m for m in (prune.method if prune else None, quant.method if quant else None) if m),
                seconds=time.perf_counter() - start)
    return info


@contextmanager
def _dense_twins(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Swap the compressed layers ``names`` for dense Linears of the same effective weight while the
    calibration batches pass: packed layers would rebuild their weight for every batch."""
    saved = {name: model.get_submodule(name) for name in names}
    for name, module in saved.items():
        if callable(getattr(module, "dequantized_weight", None)):
            set_module(model, name, _dense_from(module.dequantized_weight(), module))
    try:
        yield
    finally:
        for name, module in saved.items():
            set_module(model, name, module)


def _needs_hessian(config: RunConfig) -> bool:
    return (config.quant is not None and config.quant.method == "gptq") or \
        (config.prune is not None and config.prune.method == "sparsegpt")


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


def _pre_prune(model: nn.Module, config: RunConfig, names: list[str]) -> dict[str, Tensor]:
    """Uncalibrated pruning (magnitude, global, l2) runs over all layers first; its masks are then
    respected by GPTQ. Calibrated pruning happens block by block instead."""
    if config.prune is None or config.prune.method in CALIBRATED_PRUNE:
        return {}
    return prune_(model, config.prune, names)


@torch.no_grad()
def compress_calibrated_(model: nn.Module, config: RunConfig, names: list[str], tokens: Tensor,
                         options: GPTQOptions | None = None, batch_tokens: int = 4096) -> CalibrationReport:
    """Compress the Linears ``names`` of ``model`` as ``config`` says, using calibration ``tokens``
    (LongTensor ``[samples, length]``). ``model`` changes in place (modules replaced, no tensor
    written). Batches hold about ``batch_tokens`` tokens. Returns per-layer info and timings."""
    options = options or GPTQOptions()
    _check_tokens(model, tokens)
    report = CalibrationReport(options={"act_order": options.act_order, "damp": options.damp,
                                        "block_size": options.block_size, "static_groups": options.static_groups})
    blocks, by_block = _layers_by_block(model, names)
    masks = _pre_prune(model, config, names)
    clock = dict.fromkeys(("capture_s", "statistics_s", "solve_s", "propagate_s"), 0.0)
    start = time.perf_counter()
    inputs: list[BlockInputs] = capture_block_inputs(model, blocks[0], tokens, batch_tokens)
    clock["capture_s"] = time.perf_counter() - start
    hessian = _needs_hessian(config)
    last = max(i for i, layer_names in enumerate(by_block) if layer_names)
    for block, layer_names in zip(blocks[:last + 1], by_block):
        if layer_names:
            start = time.perf_counter()
            stats = LayerStatistics.collect(block, {n: model.get_submodule(n) for n in layer_names}, inputs, hessian)
            clock["statistics_s"] += time.perf_counter() - start
            start = time.perf_counter()
            for name in layer_names:
                report.layers[name] = compress_layer_(model, name, config, stats[name], options, masks.get(name))
            del stats
            clock["solve_s"] += time.perf_counter() - start
        if block is not blocks[last]:
            start = time.perf_counter()
            with _dense_twins(model, layer_names):
                inputs = forward_block(block, inputs)
            clock["propagate_s"] += time.perf_counter() - start
    report.timings = {**clock, "calibrate_s": sum(clock.values())}
    return report
