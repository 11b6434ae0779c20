"""One setting, answered from the results store when it is there, else run and stored.

This is the single road every caller takes for one setting (the CLI's sweep, the dashboard's
Compress and Trade-offs pages): the store key is computed without loading anything, and the model
is loaded through the caller's loader only when a run is really needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from memopt_core.config import ModelSpec, RunConfig
from memopt_core.runs.identity import eval_identity, model_identity, setting_identity
from memopt_core.runs.store import ResultStore, run_key


class Runner(Protocol):
    """What a stored run needs of a loaded model: :class:`memopt_core.runs.workbench.Workbench`."""

    def run(self, config: RunConfig) -> Any:  # -> RunResult (anything with ``to_dict()``)
        ...


RunnerLoader = Callable[[ModelSpec], Runner]


@dataclass(frozen=True)
class StoredRun:
    """``result`` is a ``RunResult.to_dict()``; ``from_store`` says it was answered without a run."""

    result: dict[str, Any]
    from_store: bool
    key: str


def config_key(config: RunConfig, identity: str | None = None) -> str:
    """The results-store key of ``config``, computed without loading the model."""
    calib = config.calib if config.needs_calibration else None
    return run_key(identity or model_identity(config.model), setting_identity(config.prune, config.quant, calib),
                   eval_identity(config.model, config.eval, config.targets))


def stored_run(config: RunConfig, store: ResultStore | None, load: RunnerLoader,
               sweep_name: str | None = None) -> StoredRun:
    """The result of ``config`` from ``store`` if it is there, else ``load(config.model).run(config)``,
    stored under its key (with ``sweep_name`` when it belongs to a sweep)."""
    identity = model_identity(config.model)
    key = config_key(config, identity)
    found = store.get(key) if store is not None else None
    if found is not None:
        return StoredRun(found, True, key)
    result = load(config.model).run(config).to_dict()
    if store is not None:
        store.put(key, config.model.source, identity, config.label, result, sweep=sweep_name)
    return StoredRun(result, False, key)
