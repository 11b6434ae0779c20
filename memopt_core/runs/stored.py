"""One setting answered from the results store, or run and stored: what a sweep does per setting,
in this process or on a worker of a cluster (``memopt_core.runs.executors``)."""
from __future__ import annotations

from typing import Any

from memopt_core.config import PruneConfig, QuantConfig, RunConfig
from memopt_core.runs.identity import eval_identity, model_identity, setting_identity
from memopt_core.runs.store import ResultStore, run_key


def setting_label(prune: PruneConfig | None, quant: QuantConfig | None) -> str:
    return " + ".join(x.label for x in (prune, quant) if x is not None) or "uncompressed"


def config_key(config: RunConfig, identity: str | None = None) -> str:
    """The results-store key of ``config``, computed without loading the model."""
    calib = config.calib if config.needs_calibration else None
    return run_key(identity or model_identity(config.model), setting_identity(config.prune, config.quant, calib),
                   eval_identity(config.model, config.eval, config.targets))


def stored_run(config: RunConfig, store: ResultStore | None, workbench=None,
               sweep_name: str | None = None) -> tuple[dict[str, Any], bool, Any]:
    """The result of ``config`` from the store if it is there, else run it and store it.

    Returns (``RunResult.to_dict()``, whether it came from the store, the workbench used or None).
    ``workbench`` is loaded only when a run is really needed."""
    identity = model_identity(config.model)
    key = config_key(config, identity)
    found = store.get(key) if store is not None else None
    if found is not None:
        return found, True, workbench
    if workbench is None:
        # torch and transformers load with it: only once a run is really needed, never for a store hit.
        from memopt_core.runs.workbench import Workbench

        workbench = Workbench.load(config.model)
    result = workbench.run(config).to_dict()
    if store is not None:
        store.put(key, config.model.source, identity, setting_label(config.prune, config.quant), result,
                  sweep=sweep_name)
    return result, False, workbench
