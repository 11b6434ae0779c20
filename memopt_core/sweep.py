"""Grids of settings on one model: one load, one baseline, a fresh copy per setting.

Finished settings go to the results store as they finish, so an interrupted sweep resumes where
it stopped and a rerun of a finished sweep answers from the store without loading the model.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig, TargetConfig
from memopt_core.errors import ConfigError
from memopt_core.identity import eval_identity, model_identity, setting_identity
from memopt_core.pareto import pareto_mask
from memopt_core.results import QUALITY_METRIC, result_row
from memopt_core.store import ResultStore, run_key

Progress = Callable[[int, int, str, float | None], None]  # (done, total, current setting, seconds left)


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep. Ratio 0 and bits 16 mean "none"; '2:4'/'4:8' prune methods ignore ratios."""

    prune_methods: tuple[str, ...] = ("magnitude",)
    prune_ratios: tuple[float, ...] = (0.0,)
    bits: tuple[int | str, ...] = (16,)
    group_sizes: tuple[int | None, ...] = (None,)
    quant_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        for axis in ("prune_methods", "prune_ratios", "bits", "group_sizes"):
            values = tuple(getattr(self, axis))
            if not values:
                raise ConfigError(f"sweep axis {axis.replace('_', ' ')} is empty; give at least one value")
            object.__setattr__(self, axis, values)
        self.settings()  # validate every combination now, before any model is loaded

    def _prunes(self) -> list[PruneConfig | None]:
        prunes: list[PruneConfig | None] = []
        for method, ratio in itertools.product(self.prune_methods, self.prune_ratios):
            config = PruneConfig.from_cli(method, ratio)
            prunes.append(None if config.is_noop else config)
        return list(dict.fromkeys(prunes))

    def _quants(self) -> list[QuantConfig | None]:
        quants: list[QuantConfig | None] = []
        for bits, group in itertools.product(self.bits, self.group_sizes):
            options = dict(self.quant_options)
            if group is not None:
                options.update(granularity="group", group_size=group)
            quants.append(QuantConfig.from_bits(bits, **options))
        return list(dict.fromkeys(quants))

    def settings(self) -> list[tuple[PruneConfig | None, QuantConfig | None]]:
        return list(itertools.product(self._prunes(), self._quants()))


@dataclass
class SweepResult:
    table: pd.DataFrame
    cancelled: bool
    seconds: float
    from_store: int
    computed: int


def setting_label(prune: PruneConfig | None, quant: QuantConfig | None) -> str:
    return " + ".join(x.label for x in (prune, quant) if x is not None) or "uncompressed"


def mark_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """Add a boolean ``pareto`` column: lowest stored bytes for the quality, best quality for the bytes."""
    if table.empty:
        return table.assign(pareto=pd.Series(dtype=bool))
    metric, higher_is_better = QUALITY_METRIC[table["kind"].iloc[0]]
    quality = table[metric].astype(float)
    losses = (-quality if higher_is_better else quality).tolist()
    return table.assign(pareto=pareto_mask(table["stored_bytes"].astype(float).tolist(), losses))


class _Eta:
    """Seconds left from the mean time of the settings computed so far (stored ones cost ~0)."""

    def __init__(self):
        self.computed_seconds: list[float] = []

    def left(self, remaining_to_compute: int) -> float | None:
        if not self.computed_seconds:
            return None
        return remaining_to_compute * sum(self.computed_seconds) / len(self.computed_seconds)


def run_sweep(spec: ModelSpec, grid: SweepGrid, eval_config: EvalConfig | None = None,
              targets: TargetConfig | None = None, store: ResultStore | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              sweep_name: str | None = None, workbench=None) -> SweepResult:
    """Run every setting of ``grid`` on ``spec``; returns one row per finished setting.

    ``workbench`` (a loaded :class:`memopt_core.runner.Workbench`) is reused when given; otherwise
    the model is loaded on the first setting the store does not already hold. ``cancel`` is
    checked between settings: what finished is kept (and stored)."""
    start = time.perf_counter()
    eval_config = eval_config or EvalConfig()
    targets = targets or TargetConfig()
    settings = grid.settings()
    identity = model_identity(spec)
    evaluation = eval_identity(spec, eval_config, targets)
    rows, from_store, eta = [], 0, _Eta()
    pending = [(p, q, run_key(identity, setting_identity(p, q), evaluation)) for p, q in settings]
    stored = {key: store.get(key) for _, _, key in pending} if store is not None else {}
    to_compute = sum(1 for *_, key in pending if stored.get(key) is None)
    cancelled = False
    for done, (prune, quant, key) in enumerate(pending):
        label = setting_label(prune, quant)
        if progress:
            progress(done, len(pending), label, eta.left(to_compute))
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        result = stored.get(key)
        if result is not None:
            from_store += 1
        else:
            if workbench is None:
                from memopt_core.runner import Workbench

                workbench = Workbench.load(spec)
            began = time.perf_counter()
            config = RunConfig(model=spec, prune=prune, quant=quant, targets=targets, eval=eval_config)
            result = workbench.run(config).to_dict()
            eta.computed_seconds.append(time.perf_counter() - began)
            to_compute -= 1
            if store is not None:
                store.put(key, spec.source, identity, label, result, sweep=sweep_name)
        rows.append(result_row(result, label=label, key=key))
    if progress and not cancelled:
        progress(len(pending), len(pending), "done", 0.0)
    table = mark_pareto(pd.DataFrame(rows))
    return SweepResult(table=table, cancelled=cancelled, seconds=time.perf_counter() - start,
                       from_store=from_store, computed=len(rows) - from_store)
