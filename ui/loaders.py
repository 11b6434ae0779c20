"""Cached, shared resources: loaded originals (one Workbench per ModelSpec), the engine processes
that run the Compress page's settings, and the results store.

Workbenches are shared read-only by every browser session: runs compress structural copies, so
one user's setting never changes another's model. At most ``MEMOPT_MAX_MODELS`` (default 2)
originals stay loaded; the least recently used is dropped when another is loaded. The same limit
holds for engine processes (one per model, each holding its own copy of the original): the
Compress page's runs go there (``MEMOPT_ENGINE=process``, the default) so that they never share
the server's GIL with Streamlit; ``MEMOPT_ENGINE=thread`` runs them in a thread of the server.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable

import streamlit as st

from memopt_core.config import ModelSpec, RunConfig
from memopt_core.errors import ConfigError
from memopt_core.loading.cache import cache_dir
from memopt_core.runs.engine_process import EngineProcess
from memopt_core.runs.store import ResultStore, default_db_path
from memopt_core.runs.stored import StoredRun, config_key, store_result
from memopt_core.runs.stored import stored_run as engine_stored_run

MAX_MODELS_ENV = "MEMOPT_MAX_MODELS"
DEFAULT_MAX_MODELS = 2
ENGINE_ENV = "MEMOPT_ENGINE"
ENGINES = ("process", "thread")


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
    # torch + transformers load here, on the first model load: opening the app or a stored result needs neither.
    from memopt_core.runs.workbench import Workbench

    bench = Workbench.load(spec)
    with _loaded_lock:
        _loaded.add(spec)
    return bench


def workbench(spec: ModelSpec):
    """The shared :class:`memopt_core.runs.workbench.Workbench` of ``spec``, loading it on first use."""
    return _cached_workbench(spec)


def engine_kind() -> str:
    """Where the Compress page's runs compute: ``$MEMOPT_ENGINE`` (``process``, the default, or ``thread``)."""
    kind = os.environ.get(ENGINE_ENV, "").strip() or "process"
    if kind not in ENGINES:
        raise ConfigError(f"{ENGINE_ENV}={kind!r} must be 'process' or 'thread'")
    return kind


# The live engine processes, so pages can tell whether a model is loaded in one without starting it.
_engines: dict[tuple[ModelSpec, str], EngineProcess] = {}


def _stop_engine(engine: EngineProcess) -> None:
    """Called by Streamlit when an engine leaves the cache (evicted, or cleared after it died)."""
    with _loaded_lock:
        _engines.pop(next((key for key, value in _engines.items() if value is engine), None), None)
    engine.close()


@st.cache_resource(max_entries=_cache_size(), show_spinner=False, on_release=_stop_engine)
def _cached_engine(spec: ModelSpec, cache: str) -> EngineProcess:
    engine = EngineProcess(spec)
    with _loaded_lock:
        _engines[(spec, cache)] = engine
    return engine


def engine(spec: ModelSpec) -> EngineProcess:
    """``spec``'s engine process (for this memopt cache), started on first use and again if it died."""
    cache = str(cache_dir())
    running = _cached_engine(spec, cache)
    if not running.alive:
        _cached_engine.clear(spec, cache)
        running = _cached_engine(spec, cache)
    return running


def run_steps(config: RunConfig, cancel: Any = None, target_ci: float | None = None):
    """Step messages (``progressive_run.step_message``) of ``config``, computed where
    :func:`engine_kind` says: the model's engine process, or this process's shared Workbench."""
    if engine_kind() == "process":
        yield from engine(config.model).steps(config, cancel, target_ci)
        return
    # The engine's step types, imported when a run starts: importing them loads torch (seconds).
    from memopt_core.runs.progressive_run import step_message

    bench = workbench(config.model)
    yield "loaded", {}
    for step in bench.run_steps(config, cancel=cancel, target_ci=target_ci):
        yield step_message(step)


def with_model(spec: ModelSpec, function: str, *args: Any) -> Any:
    """``function(workbench, *args)`` (``"package.module:name"``) computed where the runs compute,
    so a view that reads the original's weights never loads a second copy of the model."""
    if engine_kind() == "process":
        return engine(spec).call(function, *args)
    from memopt_core.runs.engine_serve import resolve  # imports the engine (torch): on request only

    return resolve(function)(workbench(spec), *args)


def is_loaded(spec: ModelSpec) -> bool:
    """Whether ``spec`` is in this process's cache now (using it will not load weights)."""
    with _loaded_lock:
        return spec in _loaded


def model_at_hand(spec: ModelSpec) -> bool:
    """Whether :func:`with_model` for ``spec`` can answer without loading the model."""
    if engine_kind() == "thread":
        return is_loaded(spec)
    with _loaded_lock:
        return any(key[0] == spec and running.loaded and running.alive for key, running in _engines.items())


def loader(on_progress: Callable[[str], None] | None = None) -> Callable[[ModelSpec], Any]:
    """A loader for ``memopt_core.runs`` that goes through the shared cache and, when given
    ``on_progress``, names each step (loading once, then compressing and evaluating)."""

    def load(spec: ModelSpec):
        if on_progress is not None and not is_loaded(spec):
            on_progress(f"Loading {spec.source} (once; later runs reuse it)")
        bench = workbench(spec)
        if on_progress is not None:
            on_progress("Compressing a copy and evaluating it")
        return bench

    return load


@st.cache_resource(show_spinner=False)
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def result_store() -> ResultStore:
    """The shared results store under the memopt cache (``$MEMOPT_CACHE``)."""
    return _store(str(default_db_path()))


def store_key(config: RunConfig) -> str:
    """The store key of ``config``, as ``stored_run`` computes it (no model is loaded)."""
    return config_key(config)


def peek_stored(config: RunConfig) -> dict | None:
    """The stored result of ``config`` if the store has it; never runs or loads anything."""
    return result_store().get(store_key(config))


def stored_run(config: RunConfig, on_progress: Callable[[str], None] | None = None) -> StoredRun:
    """The result of ``config``: answered from the store at once when it is there, else computed."""
    return engine_stored_run(config, result_store(), loader(on_progress))


def result_saver(config: RunConfig) -> Callable[[dict], None]:
    """A function that stores a finished result of ``config`` in the results store, bound here in
    the page's thread so a worker thread can call it."""
    return functools.partial(store_result, result_store(), config)
