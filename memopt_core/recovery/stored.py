"""Recovered runs in the results store, beside the unrecovered ones (keys, labels, look-ups; the
run itself is ``recover.stored_recovery``).

A recovered run is keyed like its setting plus the recovery settings, and labelled
"<setting> + recovery N steps"; a run stopped early is keyed and labelled with the step it stopped
at ("+ recovery 40 of 150 steps (stopped)"), so asking again for N steps trains again. The
unrecovered run measured on the way is stored under the ordinary run's key when it is missing
(same figures: the compression is deterministic).
"""
from __future__ import annotations

import json
from typing import Any

from memopt_core.config import RunConfig
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.runs.identity import eval_identity, model_identity, setting_identity
from memopt_core.runs.store import ResultStore, run_key
from memopt_core.runs.stored import config_key


def recovery_key(config: RunConfig, recovery: RecoveryConfig, identity: str | None = None,
                 stopped_at: int | None = None) -> str:
    """The store key of ``config`` recovered with ``recovery`` (computed without loading the model)."""
    calib = config.calib if config.needs_calibration else None
    settings = {**setting_identity(config.prune, config.quant, calib), "recovery": recovery.to_dict()}
    if stopped_at is not None:
        settings["stopped_at"] = stopped_at
    return run_key(identity or model_identity(config.model), settings,
                   eval_identity(config.model, config.eval, config.targets))


def recovered_label(config: RunConfig, recovery: RecoveryConfig, steps_done: int | None = None) -> str:
    """'magnitude 50% + recovery 150 steps', or '... + recovery 40 of 150 steps (stopped)'."""
    setting = config.label
    if steps_done is None or steps_done == recovery.steps:
        return f"{setting} {recovery.label}"
    return f"{setting} + recovery {steps_done} of {recovery.steps} steps (stopped)"


def peek_recovered(config: RunConfig, recovery: RecoveryConfig, store: ResultStore) -> dict[str, Any] | None:
    """The stored result of the full recovery of ``config``, if there is one; never runs anything."""
    return store.get(recovery_key(config, recovery))


def store_recovered(result: dict[str, Any], before: dict[str, Any], config: RunConfig, recovery: RecoveryConfig,
                    store: ResultStore) -> str:
    """Put a recovered run's ``result`` (``RecoveredRun.to_dict()``) into ``store``, and the unrecovered
    run ``before`` (``RunResult.to_dict()``) under the ordinary run's key when that is missing.
    Returns the recovered run's key."""
    identity = model_identity(config.model)
    plain = config_key(config, identity)
    if store.get(plain) is None:
        store.put(plain, config.model.source, identity, config.label, before)
    done = result["recovery"]["steps_done"]
    stopped = None if result["recovery"]["stop_reason"] == "finished" else done
    key = recovery_key(config, recovery, identity, stopped_at=stopped)
    store.put(key, config.model.source, identity, recovered_label(config, recovery, done), result)
    return key


def _same_setting(result: dict[str, Any], config: RunConfig) -> bool:
    wanted = json.loads(json.dumps(config.to_dict(), default=str))  # as stored: tuples became lists
    parts = ("model", "prune", "quant", "targets", "eval") + (("calib",) if config.needs_calibration else ())
    return all(result["config"].get(part) == wanted[part] for part in parts)


def recovered_results(store: ResultStore, configs: list[RunConfig]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(key, label, result)`` of every stored recovered run of one of ``configs`` (same model,
    setting, targets and evaluation), newest first: for showing beside a sweep's points."""
    if not configs:
        return []
    rows = store.rows(model=configs[0].model.source)
    return [(row["key"], row["setting"], row["result"]) for row in rows
            if "recovery" in row["result"] and any(_same_setting(row["result"], c) for c in configs)]
