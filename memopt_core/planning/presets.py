"""The model side of the what-if planner: presets, checked configs and exact parameter counts.

Presets are the published ``config.json`` fields of well-known models, shipped as package data
(``memopt_core/planning/model_configs/*.json``) and found through ``importlib.resources`` so they also work from
an installed wheel. Each file carries a ``_memopt`` entry (title, hub id, published parameter
count) that is not a config field and is stripped before transformers sees the config. Counts come from the model built on the
meta device (true shapes, no memory), split by component and into the layers memopt compresses.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from memopt_core.compression.walk import find_blocks, target_linears
from memopt_core.errors import ConfigError, DataError, UnsupportedModelError, choices
from memopt_core.paths import user_path

PRESET_PACKAGE = "memopt_core.planning.model_configs"
META_KEY = "_memopt"
MAX_PARAMS = 10**13
MAX_LAYERS = 1024
# Fields that describe how published weights were stored, not the architecture being planned.
_DROPPED_FIELDS = (META_KEY, "quantization_config", "auto_map")
COMPONENTS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")
_EXAMPLE_TYPES = ("llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2", "bert")


def list_presets() -> list[str]:
    """Names of the bundled presets, sorted (e.g. ``'llama-3-8b'``)."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def _read_preset(name: str) -> dict:
    names = list_presets()
    if name not in names:
        raise ConfigError(f"preset {name!r} is not known; choose {choices(names)}")
    return json.loads(resources.files(PRESET_PACKAGE).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def load_preset(name: str) -> dict:
    """The config.json fields of preset ``name`` (a fresh dict, without the ``_memopt`` entry)."""
    return {k: v for k, v in _read_preset(name).items() if k != META_KEY}


def preset_info(name: str) -> dict:
    """About preset ``name``: title, hub_id, published_params, published_exact, source, note."""
    return dict(_read_preset(name).get(META_KEY, {}))


def _read_json(path: str | os.PathLike) -> dict:
    """Read a config.json (or the config.json inside a model folder); weights are never touched."""
    file = user_path(path, "config file")
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise DataError(f"config file {str(file)!r} does not exist; give a config.json or a model folder holding one")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"config file {str(file)!r} cannot be read: {_one_line(exc)}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"config file {str(file)!r} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise DataError(f"config file {str(file)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def load_config(source: str | os.PathLike | dict | PretrainedConfig) -> PretrainedConfig:
    """A checked transformers config from a config.json path, a model folder, a dict or a config.

    Raises DataError for an unreadable or malformed file and ConfigError for a missing or unknown
    ``model_type``, invalid fields, or absurd sizes (checked before any model is built).
    """
    if isinstance(source, PretrainedConfig):
        check_sizes(source)
        return source
    data = dict(source) if isinstance(source, dict) else _read_json(source)
    data = {k: v for k, v in data.items() if k not in _DROPPED_FIELDS}
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError("config has no 'model_type'; the planner needs it to know the architecture "
                          f"(e.g. {choices(_EXAMPLE_TYPES)})")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigError(f"model_type {model_type!r} is not known to this transformers version; "
                          f"use a built-in one such as {choices(_EXAMPLE_TYPES)}")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except Exception as exc:  # transformers raises many kinds here; the user needs one line
        raise ConfigError(f"config for {model_type!r} is invalid: {_one_line(exc)}") from exc
    check_sizes(config)
    return config


@dataclass(frozen=True)
class ModelDims:
    """The sizes the memory formulas need, read from a config (text part of multimodal ones)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    experts: int = 1
    sliding_window: int | None = None
    max_positions: int | None = None

    def rough_params(self) -> int:
        """An upper-bound count from the fields alone: untied embeddings, gated MLP, all experts."""
        attention = self.hidden * self.head_dim * 2 * (self.heads + self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate * self.experts
        return 2 * self.vocab * self.hidden + self.layers * (attention + mlp)


def _positive(config: PretrainedConfig, name: str, default: int | None = None) -> int:
    value = getattr(config, name, None)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config field {name} is {value!r}; it must be a positive whole number")
    return value


def model_dims(config: PretrainedConfig) -> ModelDims:
    """Read hidden size, layers, heads, KV heads, head_dim, MLP width and vocabulary from ``config``.

    ``head_dim`` is ``config.head_dim`` when set, else ``hidden_size // num_attention_heads``;
    KV heads default to the attention heads (no grouped-query attention); the MLP width falls
    back to ``n_inner`` (GPT-2) and then to 4 x hidden.
    """
    text = config.get_text_config()
    hidden = _positive(text, "hidden_size")
    heads = _positive(text, "num_attention_heads")
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None)
    window = getattr(text, "sliding_window", None)
    use_window = getattr(text, "use_sliding_window", True)  # Qwen2 lists a window it does not use
    positions = getattr(text, "max_position_embeddings", None)
    return ModelDims(hidden=hidden, layers=_positive(text, "num_hidden_layers"), heads=heads,
                     kv_heads=_positive(text, "num_key_value_heads", heads),
                     head_dim=_positive(text, "head_dim", max(hidden // heads, 1)),
                     intermediate=_positive(text, "intermediate_size", _positive(text, "n_inner", 4 * hidden)),
                     vocab=_positive(text, "vocab_size"),
                     experts=experts if isinstance(experts, int) and experts > 1 else 1,
                     sliding_window=window if isinstance(window, int) and use_window else None,
                     max_positions=positions if isinstance(positions, int) else None)


def check_sizes(config: PretrainedConfig) -> ModelDims:
    """Refuse absurd configs before a model is built: over 10^13 parameters or 1024 layers."""
    dims = model_dims(config)
    if dims.layers > MAX_LAYERS:
        raise ConfigError(f"num_hidden_layers {dims.layers} is absurd; at most {MAX_LAYERS} are accepted")
    rough = dims.rough_params()
    if rough > MAX_PARAMS:
        raise ConfigError(f"config describes about {rough:.3g} parameters (hidden_size {dims.hidden}, "
                          f"{dims.layers} layers, vocab {dims.vocab}); more than 1e13 is refused as absurd")
    return dims


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
        raise UnsupportedModelError(f"cannot build {config.model_type!r} from this config: {_one_line(exc)}") from exc


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


def _one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (transformers' validation errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
