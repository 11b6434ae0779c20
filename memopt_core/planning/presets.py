"""The model side of the what-if planner: presets and checked configs (counts: ``counting.py``).

Presets are the published ``config.json`` fields of well-known models, shipped as package data
(``memopt_core/planning/model_configs/*.json``) and found through ``importlib.resources`` so they
also work from an installed wheel. Each file carries a ``_memopt`` entry (title, hub id, published
parameter count) that is not a config field and is stripped before transformers sees the config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from memopt_core.errors import ConfigError, DataError, choices
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
        raise DataError(f"config file {str(file)!r} cannot be read: {one_line(exc)}") from exc
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
        raise ConfigError(f"config for {model_type!r} is invalid: {one_line(exc)}") from exc
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


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (transformers' validation errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
