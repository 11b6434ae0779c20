"""What-if memory planner: from a config.json alone (no weights), the memory at a compression setting.

The model is built on the meta device (shapes only, no memory) to count parameters exactly, then
closed-form formulas give weights, KV cache and activations. All figures are theoretical: what
the tensors would take, not what a framework allocates around them. GiB are binary (2**30).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import psutil
from transformers import PretrainedConfig

from memopt_core.errors import ConfigError, choices
from memopt_core.planning.counting import ParamBreakdown, TargetShape, count_parameters
from memopt_core.planning.presets import (COMPONENTS, ModelDims, check_sizes, list_presets, load_config, load_preset,
                                          preset_info)
from memopt_core.units import GIB, format_gib

__all__ = ["PlanConfig", "ParamBreakdown", "TargetShape", "MemoryEstimate", "count_parameters", "estimate",
           "group_count", "layer_bits", "kv_cache_bytes", "activation_bytes", "fits_on", "format_gib",
           "list_presets", "load_preset", "load_config", "preset_info", "GIB"]

PLAN_BITS = (2, 3, 4, 5, 6, 8, 16)
KV_BITS = (16, 8, 4)
BASE_DTYPE_BYTES = (1, 2, 4)
SPARSITY_FORMATS = ("dense", "bitmask")
MAX_SPARSITY = 0.95
SCALE_BITS = 16  # fp16 scale (and fp16 zero point when asymmetric) per group, as GPTQ/AWQ store them
ACCELERATORS = (("16 GiB GPU (T4, V100 16GB)", 16), ("24 GiB GPU (RTX 4090, A10, L4)", 24),
                ("40 GiB GPU (A100 40GB)", 40), ("48 GiB GPU (L40S, RTX A6000)", 48),
                ("80 GiB GPU (A100 80GB, H100)", 80))


def _whole(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} {value!r} must be a whole number of at least {minimum}")


def _whole_choice(name: str, value, allowed: tuple[int, ...], hint: str = "") -> None:
    # isinstance first: 4.0 == 4 and True == 1 would otherwise slip through the membership test
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{name} {value!r} is not supported; choose {choices(allowed)}{hint}")


@dataclass(frozen=True)
class PlanConfig:
    """A compression and serving setting to estimate. ``bits=16`` means no quantization.

    ``group_size=None`` is per-channel (one scale per output row). ``sparsity`` only saves memory
    with ``sparsity_format='bitmask'`` (1 bit per weight + the non-zero values). ``base_dtype_bytes``
    is the storage of everything not compressed (embeddings, norms, lm_head, biases).
    """

    bits: int = 16
    group_size: int | None = 128
    symmetric: bool = True
    sparsity: float = 0.0
    sparsity_format: str = "dense"
    context: int = 2048
    batch: int = 1
    kv_bits: int = 16
    base_dtype_bytes: int = 2

    def __post_init__(self) -> None:
        _whole_choice("bits", self.bits, PLAN_BITS, " (16 = no quantization)")
        if self.group_size is not None:
            _whole("group size", self.group_size, 1)
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"symmetric must be True or False, got {self.symmetric!r}")
        ok = isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
        if not ok or not 0.0 <= self.sparsity <= MAX_SPARSITY:
            raise ConfigError(f"sparsity {self.sparsity!r} is out of range; choose a value from 0 to {MAX_SPARSITY}")
        if self.sparsity_format not in SPARSITY_FORMATS:
            raise ConfigError(f"sparsity format {self.sparsity_format!r} is not supported; "
                              f"choose {choices(SPARSITY_FORMATS)}")
        _whole("context", self.context, 1)
        _whole("batch", self.batch, 1)
        _whole_choice("KV-cache bits", self.kv_bits, KV_BITS)
        _whole_choice("base dtype bytes", self.base_dtype_bytes, BASE_DTYPE_BYTES)

    @property
    def label(self) -> str:
        """Field names: ``W4A16 g128 sym``, ``W16A16``, ``W8A16 per-channel asym + 50% sparse (bitmask)``."""
        text = f"W{self.bits}A16"
        if self.bits < 16:
            grain = "per-channel" if self.group_size is None else f"g{self.group_size}"
            text += f" {grain} {'sym' if self.symmetric else 'asym'}"
        if self.sparsity > 0:
            text += f" + {self.sparsity:.0%} sparse ({self.sparsity_format})"
        return text


def group_count(in_features: int, group_size: int | None) -> int:
    """Scale groups per output row: ceil(in / group_size), a ragged last group counting as one; 1 per-channel."""
    return 1 if group_size is None else math.ceil(in_features / group_size)


def layer_bits(out_features: int, in_features: int, plan: PlanConfig) -> dict[str, float]:
    """Bits one ``[out, in]`` weight takes under ``plan``: ``values``, ``scales`` (incl. zero points), ``mask``.

    values = out*in*bits, or (1 - sparsity)*out*in*bits with a bitmask; mask = out*in with a bitmask;
    scales = out*groups*16, doubled when asymmetric (fp16 zero point); none at 16 bits, where the
    values stay at the base precision (``base_dtype_bytes``) like the untargeted parts.
    """
    numel = out_features * in_features
    bitmask = plan.sparsity_format == "bitmask"
    value_bits = plan.bits if plan.bits < 16 else 8 * plan.base_dtype_bytes
    values = numel * value_bits * ((1.0 - plan.sparsity) if bitmask else 1.0)
    scales = 0
    if plan.bits < 16:
        per_group = SCALE_BITS * (1 if plan.symmetric else 2)
        scales = out_features * group_count(in_features, plan.group_size) * per_group
    return {"values": values, "scales": scales, "mask": numel if bitmask else 0}


def kv_cache_bytes(dims: ModelDims, plan: PlanConfig) -> int:
    """2 (K and V) x batch x context x layers x KV heads x head_dim x kv_bits / 8 (GQA: KV heads, not heads)."""
    return 2 * plan.batch * plan.context * dims.layers * dims.kv_heads * dims.head_dim * plan.kv_bits // 8


def activation_bytes(dims: ModelDims, plan: PlanConfig, causal: bool) -> int:
    """Rough peak of one forward pass without gradients, for one block at a time:

    batch x context x (4 x hidden + 2 x intermediate) x base_dtype_bytes (residual, normed input,
    attention output and q/k/v; gate and up of the MLP), plus for causal LMs the fp32 logits
    batch x context x vocab x 4 bytes. Attention scores are not materialized (SDPA/flash).
    """
    tokens = plan.batch * plan.context
    hidden_states = tokens * (4 * dims.hidden + 2 * dims.intermediate) * plan.base_dtype_bytes
    return hidden_states + (tokens * dims.vocab * 4 if causal else 0)


@dataclass(frozen=True)
class MemoryEstimate:
    """Theoretical memory of a model under a plan, in bytes; ``breakdown`` sums to ``total_bytes``.

    ``bits_per_weight`` is over the targeted weights, scales, zero points and mask included.
    """

    model: str
    plan: PlanConfig
    params: int
    targeted_params: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    total_bytes: int
    bits_per_weight: float
    scale_bytes: int
    mask_bytes: int
    breakdown: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: every field, the plan as a dict with its label, and ``total_gib``."""
        data = dataclasses.asdict(self)
        data["plan"]["label"] = self.plan.label
        data["total_gib"] = self.total_bytes / GIB
        return data


def _weight_bits(counts: ParamBreakdown, plan: PlanConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(bits per component, bits of the targeted weights split into values / scales / mask)."""
    base_bits = plan.base_dtype_bytes * 8
    bits = {name: float(n * base_bits) for name, n in counts.by_component().items()}
    parts = {"values": 0.0, "scales": 0.0, "mask": 0.0}
    for layer in counts.target_layers:
        stored = layer_bits(layer.out_features, layer.in_features, plan)
        # The component was counted at base precision above; swap in the compressed size.
        as_base = layer.out_features * layer.in_features * base_bits
        bits[layer.component] += layer.count * (sum(stored.values()) - as_base)
        for key in parts:
            parts[key] += layer.count * stored[key]
    return bits, parts


def _bytes(bits: float) -> int:
    """Whole bytes for a bit count; rounding to whole bits first keeps 0.3 x n from adding a stray byte."""
    return math.ceil(round(bits) / 8)


def estimate(config: str | os.PathLike | dict | PretrainedConfig, plan: PlanConfig | None = None) -> MemoryEstimate:
    """Estimate weights, KV cache and activation memory of ``config`` under ``plan`` (default: no compression).

    ``config`` is a config.json path, a model folder, a dict of its fields or a transformers config;
    no weights are read. The formulas are in the ``notes`` of the result and in layer_bits,
    kv_cache_bytes and activation_bytes.
    """
    plan = plan or PlanConfig()
    config = load_config(config)
    dims = check_sizes(config)
    counts = count_parameters(config)
    bits, parts = _weight_bits(counts, plan)
    breakdown = {name: _bytes(b) for name, b in bits.items()}
    breakdown["kv_cache"] = kv_cache_bytes(dims, plan) if counts.is_causal else 0
    breakdown["activations"] = activation_bytes(dims, plan, counts.is_causal)
    weights = sum(breakdown[name] for name in COMPONENTS)
    return MemoryEstimate(
        model=f"{counts.model_class} ({config.model_type})", plan=plan, params=counts.total,
        targeted_params=counts.targeted, weights_bytes=weights, kv_cache_bytes=breakdown["kv_cache"],
        activation_bytes=breakdown["activations"], total_bytes=sum(breakdown.values()),
        bits_per_weight=sum(parts.values()) / counts.targeted, scale_bytes=_bytes(parts["scales"]),
        mask_bytes=_bytes(parts["mask"]), breakdown=breakdown, notes=_notes(counts, dims, plan))


def _notes(counts: ParamBreakdown, dims: ModelDims, plan: PlanConfig) -> list[str]:
    """The assumptions behind an estimate, one sentence each."""
    base = f"{plan.base_dtype_bytes} bytes"
    notes = [f"targeted: {counts.targeted:,} weights of the Linear layers inside the transformer blocks "
             f"at {plan.label}"]
    if plan.bits < 16:
        where = "row" if plan.group_size is None else \
            f"group of {plan.group_size} inputs per row (a ragged last group counts as one)"
        notes.append(f"an fp16 scale{'' if plan.symmetric else ' and an fp16 zero point'} per {where}")
    notes.append(f"untargeted: {counts.untargeted:,} parameters (embeddings, norms, lm_head, biases) at {base} each")
    if counts.tied_embeddings:
        notes.append("lm_head is tied to the input embeddings and stored once")
    if plan.sparsity > 0 and plan.sparsity_format == "dense":
        notes.append("sparsity saves no memory with dense storage (the zeros are stored); choose the bitmask format")
    if plan.sparsity_format == "bitmask":
        notes.append("bitmask: 1 bit per weight plus the non-zero values; "
                     "indices or padding of real sparse kernels not counted")
    notes.extend(_cache_notes(counts, dims, plan))
    if dims.experts > 1:
        notes.append(f"all {dims.experts} experts' weights are counted; activations count one expert's MLP")
    notes.append("not included: framework overhead (CUDA context, allocator cache, load-time buffers); "
                 "keep 10-20% headroom")
    notes.append("GiB = 2**30 bytes")
    return notes


def _cache_notes(counts: ParamBreakdown, dims: ModelDims, plan: PlanConfig) -> list[str]:
    """Assumptions about context, KV cache and activations."""
    notes: list[str] = []
    if dims.max_positions is not None and plan.context > dims.max_positions:
        notes.append(f"context {plan.context} exceeds the model's max_position_embeddings {dims.max_positions}")
    if not counts.is_causal:
        notes.append("encoder: no KV cache")
    else:
        notes.append(f"KV cache = 2 (K, V) x batch {plan.batch} x context {plan.context} x {dims.layers} layers x "
                     f"{dims.kv_heads} KV heads x head_dim {dims.head_dim} x {plan.kv_bits}/8 bytes")
        if plan.kv_bits < 16:
            notes.append("scales of a quantized KV cache are not counted")
        if dims.sliding_window is not None and dims.sliding_window < plan.context:
            notes.append(f"layers with a {dims.sliding_window}-token sliding window are counted at the full context "
                         "(an upper bound)")
    notes.append("activations (rough, one forward pass, no gradients): batch x context x "
                 f"(4 x hidden + 2 x intermediate) x {plan.base_dtype_bytes} bytes; "
                 "attention scores not materialized (SDPA)")
    if counts.is_causal:
        notes.append("plus fp32 logits batch x context x vocab x 4 bytes for a full prefill; generating with "
                     "logits for the last token only needs batch x vocab x 4")
    return notes


def fits_on(total_bytes: int, available_bytes: int | None = None) -> list[dict]:
    """Whether ``total_bytes`` fits common accelerators (16-80 GiB) and this machine's free RAM.

    Each entry: name, capacity_bytes, fits, headroom_bytes (negative when it does not fit).
    ``available_bytes`` overrides psutil's available RAM (for tests and remote planning).
    """
    free = psutil.virtual_memory().available if available_bytes is None else available_bytes
    devices = [(name, gib * GIB) for name, gib in ACCELERATORS] + [("this machine (free RAM)", int(free))]
    return [{"name": name, "capacity_bytes": capacity, "fits": total_bytes <= capacity,
             "headroom_bytes": capacity - total_bytes} for name, capacity in devices]


