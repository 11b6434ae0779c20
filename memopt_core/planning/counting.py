"""Exact parameter counts from a config alone: the model is built on the meta device (true
shapes, no memory), its parameters split by component and into the layers memopt compresses."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from memopt_core.compression.walk import find_blocks, target_linears
from memopt_core.errors import UnsupportedModelError
from memopt_core.planning.presets import COMPONENTS, load_config, one_line


@dataclass(frozen=True)
class TargetShape:
    """``count`` compressed layers of shape ``[out_features, in_features]`` in one component."""

    component: str
    out_features: int
    in_features: int
    count: int


@dataclass(frozen=True)
class ParamBreakdown:
    """Exact parameter counts of a model by component; ``targeted`` = weights memopt compresses."""

    total: int
    embeddings: int
    attention: int
    mlp: int
    norms: int
    lm_head: int
    other: int
    targeted: int
    target_layers: tuple[TargetShape, ...]
    tied_embeddings: bool
    is_causal: bool
    model_class: str

    @property
    def untargeted(self) -> int:
        return self.total - self.targeted

    def by_component(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COMPONENTS}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "untargeted": self.untargeted}


def is_causal_lm(config: PretrainedConfig) -> bool:
    """True for decoder LMs (they get a KV cache and logits): from ``architectures``, else the model_type."""
    if config.architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures)
    kind = config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def build_meta_model(config: PretrainedConfig) -> nn.Module:
    """The model with every tensor on the meta device: true shapes, no memory, no init cost.

    Decoder LMs use AutoModelForCausalLM; encoders use AutoModel (no task heads, BERT keeps its pooler).
    """
    auto = AutoModelForCausalLM if is_causal_lm(config) else AutoModel
    try:
        with torch.device("meta"):
            return auto.from_config(config)
    except Exception as exc:  # transformers raises many kinds; the user needs one line
        raise UnsupportedModelError(f"cannot build {config.model_type!r} from this config: {one_line(exc)}") from exc


def _target_layers(model: nn.Module) -> tuple[dict[str, nn.Module], str]:
    """Targeted layers and the blocks' name prefix. GPT-2's Conv1D counts as a Linear ([in, out] weight)."""
    try:
        chosen: dict[str, nn.Module] = dict(target_linears(model))
        prefix = find_blocks(model)[0] + "."
    except UnsupportedModelError:  # walk.find_blocks sees nn.Linear only, so GPT-2's blocks come here
        chosen, prefix = {}, _blocks_prefix(model)
    chosen.update({n: m for n, m in model.named_modules() if isinstance(m, Conv1D) and n.startswith(prefix)})
    return chosen, prefix


def _blocks_prefix(model: nn.Module) -> str:
    """Name prefix of the longest ModuleList whose first entry holds a Linear or Conv1D (find_blocks' rule)."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        has_layer = any(isinstance(m, (nn.Linear, Conv1D)) for m in module[0].modules())
        if has_layer and (best is None or len(module) > best[1]):
            best = (name, len(module))
    if best is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no stack of blocks with Linear layers to compress")
    return best[0] + "."


def _component(name: str, module: nn.Module, prefix: str, lm_head: nn.Module | None) -> str:
    """Which component a module's own parameters belong to."""
    if module is lm_head:
        return "lm_head"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "norm" in type(module).__name__.lower():
        return "norms"
    if name.startswith(prefix):
        parts = name[len(prefix):].split(".")
        return "attention" if any("attn" in p or "attention" in p for p in parts) else "mlp"
    return "other"


def _shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features); Conv1D stores its weight transposed, [in, out]."""
    if isinstance(module, Conv1D):
        return module.nf, module.weight.shape[0]
    return module.out_features, module.in_features


def _embedding_modules(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(output, input) embedding modules; some architectures implement neither accessor."""
    found = []
    for getter in (model.get_output_embeddings, model.get_input_embeddings):
        try:
            found.append(getter())
        except (NotImplementedError, AttributeError):
            found.append(None)
    return found[0], found[1]


def count_parameters(config: str | os.PathLike | dict | PretrainedConfig) -> ParamBreakdown:
    """Exact parameter counts by component, from a config only (the model is built on the meta device).

    Tied parameters are counted once (``lm_head`` is 0 when tied to the embeddings).
    """
    config = load_config(config)
    model = build_meta_model(config)
    targets, prefix = _target_layers(model)
    lm_head, embeddings = _embedding_modules(model)
    counts = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if id(param) not in seen:  # tied weights appear under two modules
                seen.add(id(param))
                counts[_component(name, module, prefix, lm_head)] += param.numel()
    shapes: dict[tuple[str, int, int], int] = {}
    for name, module in targets.items():
        key = (_component(name, module, prefix, None), *_shape(module))
        shapes[key] = shapes.get(key, 0) + 1
    tied = lm_head is not None and embeddings is not None and lm_head.weight is embeddings.weight
    targeted = sum(m.weight.numel() for m in targets.values())
    return ParamBreakdown(total=sum(counts.values()), **counts, targeted=targeted,
                          target_layers=tuple(TargetShape(c, o, i, n) for (c, o, i), n in shapes.items()),
                          tied_embeddings=tied, is_causal=is_causal_lm(config), model_class=type(model).__name__)
