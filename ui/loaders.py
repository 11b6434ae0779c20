"""Cached, shared resources: loaded originals (one Workbench per ModelSpec) and the results store.

Workbenches are shared read-only by every browser session: runs compress structural copies, so
one user's setting never changes another's model. At most ``MEMOPT_MAX_MODELS`` (default 2)
originals stay loaded; the least recently used is dropped when another is loaded.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

import streamlit as st

from memopt_core.config import ModelSpec, RunConfig
from memopt_core.errors import ConfigError
from memopt_core.runs.store import ResultStore, default_db_path

MAX_MODELS_ENV = "MEMOPT_MAX_MODELS"
DEFAULT_MAX_MODELS = 2


def max_models() -> int:
    """How many loaded originals the process keeps: ``$MEMOPT_MAX_MODELS`` or 2 (at least 1)."""
    text = os.environ.get(MAX_MODELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_MODELS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{MAX_MODELS_ENV}={text!r} must be a whole number of at least 1")
    return int(text)


# Which specs are loaded right now, so pages can offer weight views without triggering a load.
_loaded: set[ModelSpec] = set()
_loaded_lock = threading.Lock()


def _forget(bench: Any) -> None:
    """Called by Streamlit when a workbench leaves the cache (evicted as least recently used)."""
    with _loaded_lock:
        _loaded.discard(bench.loaded.spec)


def _cache_size() -> int:
    try:
        return max_models()
    except ConfigError:  # a typo in the environment must not stop the dashboard from starting
        return DEFAULT_MAX_MODELS


@st.cache_resource(max_entries=_cache_size(), show_spinner=False, on_release=_forget)
def _cached_workbench(spec: ModelSpec):
    from memopt_core.runs.workbench import Workbench  # torch + transformers: imported on first load only

    bench = Workbench.load(spec)
    with _loaded_lock:
        _loaded.add(spec)
    return bench


def workbench(spec: ModelSpec):
    """The shared :class:`memopt_core.runs.workbench.Workbench` of ``spec``, loading it on first use."""
    return _cached_workbench(spec)


def is_loaded(spec: ModelSpec) -> bool:
    """Whether ``spec`` is in the cache now (using it will not load weights)."""
    with _loaded_lock:
        return spec in _loaded


class LazyWorkbench:
    """Stands in for a Workbench in ``sweep.stored_run`` / ``run_sweep``: the model is loaded
    (through the shared cache) only when a setting is missing from the store."""

    def __init__(self, spec: ModelSpec, on_load: Callable[[str], None] | None = None):
        self.spec = spec
        self.on_load = on_load
        self.used = False

    def run(self, config: RunConfig):
        if self.on_load is not None and not is_loaded(self.spec):
            self.on_load(f"Loading {self.spec.source} (once; later runs reuse it)")
        bench = workbench(self.spec)
        if self.on_load is not None:
            self.on_load(f"Compressing a copy and evaluating {_setting(config)}")
        self.used = True
        return bench.run(config)


def _setting(config: RunConfig) -> str:
    return " + ".join(x.label for x in (config.prune, config.quant) if x is not None) or "the original"


@st.cache_resource(show_spinner=False)
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def result_store() -> ResultStore:
    """The shared results store under the memopt cache (``$MEMOPT_CACHE``)."""
    return _store(str(default_db_path()))


def store_key(config: RunConfig) -> str:
    """The store key of ``config``, as ``sweep.stored_run`` computes it (no model is loaded)."""
    from memopt_core.runs.sweep import config_key

    return config_key(config)


def peek_stored(config: RunConfig) -> dict | None:
    """The stored result of ``config`` if the store has it; never runs or loads anything."""
    return result_store().get(store_key(config))


def stored_run(config: RunConfig, on_progress: Callable[[str], None] | None = None) -> tuple[dict, bool]:
    """``(RunResult.to_dict(), from_store)``: answered from the store at once when it is there."""
    from memopt_core.runs.sweep import stored_run as engine_stored_run

    result, from_store, _ = engine_stored_run(config, result_store(), LazyWorkbench(config.model, on_progress))
    return result, from_store


def result_saver(config: RunConfig) -> Callable[[dict], None]:
    """A function that stores a finished result of ``config`` in the results store, bound here in
    the page's thread so a worker thread can call it."""
    from memopt_core.runs.identity import model_identity
    from memopt_core.runs.sweep import setting_label

    store, key = result_store(), store_key(config)
    identity, label = model_identity(config.model), setting_label(config.prune, config.quant)

    def save(result: dict) -> None:
        store.put(key, config.model.source, identity, label, result)

    return save
