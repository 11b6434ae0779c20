"""Saving a compressed model and loading it back.

A saved folder holds ``config.json`` and the tokenizer (as transformers writes them),
``model.safetensors`` with the tensors the compressed model really holds (packed codes, fp16
scales, masks ...; never pickles), and ``memopt.json``: the settings, the spec of every
compressed module (to rebuild its skeleton) and the figures of the run that made it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from transformers import AutoConfig, AutoTokenizer

from memopt_core.compression.layers import COMPRESSED_LINEARS, from_spec
from memopt_core.compression.walk import set_module
from memopt_core.errors import ModelLoadError
from memopt_core.loading.architectures import model_class
from memopt_core.paths import user_path

MANIFEST = "memopt.json"
FORMAT = "memopt-compressed/1"
WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"  # transformers' name; layer-by-layer saves are sharded by block


def manifest_record(modules: dict[str, dict], loaded, simulated: bool, result=None) -> dict[str, Any]:
    """``memopt.json``: the specs of the compressed ``modules`` (to rebuild their skeletons), the base
    model and the figures of the run ``result`` (a RunResult; None while they are not known yet)."""
    summary = None if result is None else result.to_dict()
    if summary is not None:
        summary.pop("layers", None)
    return {"format": FORMAT, "kind": loaded.kind, "architecture": loaded.architecture,
            "base_model": {"name": loaded.name, "source": loaded.source, "is_random": loaded.is_random},
            "simulated": simulated, "modules": modules, "run": summary}


def compressed_specs(model: torch.nn.Module, names: list[str]) -> dict[str, dict]:
    """``{name: spec}`` of the layers among ``names`` that a compressed module of memopt now holds."""
    specs = {}
    for name in names:
        module = model.get_submodule(name)
        if type(module).__name__ in COMPRESSED_LINEARS:
            specs[name] = module.spec()
    return specs


def write_config_and_tokenizer(config, loaded, folder: Path) -> None:
    """config.json (with the architecture, which models built from a config lack) and the tokenizer."""
    if not getattr(config, "architectures", None):
        config.architectures = [loaded.architecture]
    config.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``: the shards its ``model.safetensors.index.json`` names, or its
    ``*.safetensors``; ModelLoadError when there are none."""
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ModelLoadError(f"{index} cannot be read: {error}") from None
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"folder {folder} holds no safetensors weights")
    return files


def check_save_target(directory: str | os.PathLike) -> Path:
    """The resolved folder a save would write; one-line errors for a file, or a folder holding
    something other than a memopt save. The CLI calls it before a run, so a bad --save fails fast."""
    final = user_path(directory, "save folder").resolve()
    if final.exists() and not final.is_dir():
        raise ModelLoadError(f"{str(final)!r} is a file; give a new or empty folder to save the model in")
    if final.exists() and not (final / MANIFEST).is_file() and any(final.iterdir()):
        raise ModelLoadError(f"folder {str(final)!r} exists and is not a memopt save; choose an empty or new folder")
    return final


def save_compressed(compressed, loaded, result, directory: str | os.PathLike) -> Path:
    """Write ``compressed.model`` (a :class:`memopt_core.compression.compress.CompressedModel`) to ``directory``.

    Written into a temporary folder next to it and renamed into place, so a crash never leaves a
    folder that looks like a saved model. An existing memopt folder there is replaced."""
    final = check_save_target(directory)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as error:
        raise ModelLoadError(f"cannot save the model in {str(final)!r}: {error.strerror or error}") from None
    try:
        # The copy's own config object (structural_copy deep-copies it).
        write_config_and_tokenizer(compressed.model.config, loaded, staging)
        save_model(compressed.model, str(staging / WEIGHTS))
        specs = compressed_specs(compressed.model, compressed.target_names)
        (staging / MANIFEST).write_text(json.dumps(manifest_record(specs, loaded, compressed.simulated, result), indent=2,
                                                   default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path / MANIFEST} cannot be read: {error}") from None
    if manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{path} was saved in format {manifest.get('format')!r}; this memopt reads {FORMAT!r}")
    return manifest


def _skeleton(path: Path, manifest: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(path)
    _, auto_class = model_class(config)
    model = auto_class.from_config(config, dtype=dtype)
    for name, spec in manifest["modules"].items():
        set_module(model, name, from_spec(spec))
    return model


@dataclass
class SavedModel:
    """What a memopt save holds: the rebuilt model (on the CPU, in the dtype asked for), its
    tokenizer and its manifest (settings, module specs and the figures of the run that made it)."""

    model: torch.nn.Module
    tokenizer: Any
    manifest: dict[str, Any]


def read_saved(path: str | os.PathLike, dtype: torch.dtype) -> SavedModel:
    """Rebuild a model that :func:`save_compressed` wrote: skeleton from config + specs, then tensors.
    ``memopt_core.loading.models.load_model`` finishes it like every other load (device, eval mode)."""
    path = Path(path)
    manifest = read_manifest(path)
    model = _skeleton(path, manifest, dtype)
    state = {}
    for file in safetensors_files(path):  # one file, or one shard per block (layer-by-layer saves)
        try:
            state.update(load_file(str(file)))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise ModelLoadError(f"{file} cannot be read ({type(error).__name__}: {error})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise ModelLoadError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return SavedModel(model, AutoTokenizer.from_pretrained(path), manifest)


def _tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys that alias another tensor (tied embeddings): safetensors stores them once."""
    by_pointer: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel():
            by_pointer.setdefault(tensor.data_ptr(), []).append(key)
    return {key for keys in by_pointer.values() if len(keys) > 1 for key in keys}
