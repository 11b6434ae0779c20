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

from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig, TargetConfig
from memopt_core.errors import ConfigError
from memopt_core.runs.executors import Executor, Job, LocalExecutor, Started
from memopt_core.runs.pareto import mark_pareto
from memopt_core.runs.rows import result_row
from memopt_core.runs.store import ResultStore
from memopt_core.runs.stored import RunnerLoader

Progress = Callable[[int, int, str, float | None], None]  # (done, total, current setting, seconds left)


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep. Ratio 0 and bits 16 mean "none"; '2:4'/'4:8' prune methods ignore ratios.
    ``quant_methods`` (rtn, gptq) applies to integer bit widths; 16 bits and fp16/bf16 casts are run
    once whatever the quantizers. ``formats``: ``int`` is the integer grid (bits x group sizes x
    quantizers); every other format (nf4, fp8-e4m3, mxfp4, q4_k ...) is one setting at its own bits.
    ``quant_options``: the other QuantConfig fields, shared by all (``double_quant`` reaches nf4 only,
    a per-tensor granularity the fp8 formats only)."""

    prune_methods: tuple[str, ...] = ("magnitude",)
    prune_ratios: tuple[float, ...] = (0.0,)
    bits: tuple[int | str, ...] = (16,)
    group_sizes: tuple[int | None, ...] = (None,)
    quant_methods: tuple[str, ...] = ("rtn",)
    quant_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    formats: tuple[str, ...] = ("int",)

    def __post_init__(self) -> None:
        if "method" in self.quant_options:
            raise ConfigError("give the quantizers as quant_methods, not in quant_options")
        for axis in ("prune_methods", "prune_ratios", "bits", "group_sizes", "quant_methods", "formats"):
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
        shared = {k: v for k, v in self.quant_options.items() if k != "double_quant"}
        for fmt in dict.fromkeys(self.formats):
            if fmt != "int":
                quants.append(QuantConfig(**self._format_options(fmt)))
                continue
            for method, bits, group in itertools.product(self.quant_methods, self.bits, self.group_sizes):
                options = {**shared, "method": method}
                if group is not None:
                    options.update(granularity="group", group_size=group)
                quants.append(QuantConfig.from_bits(bits, **options))
        return list(dict.fromkeys(quants))

    def _format_options(self, fmt: str) -> dict[str, Any]:
        """The shared options that apply to a non-int format."""
        options = {k: v for k, v in self.quant_options.items() if k in ("storage", "rotate")}
        if fmt == "nf4":
            options["double_quant"] = self.quant_options.get("double_quant", False)
        if fmt.startswith("fp8") and self.quant_options.get("granularity") == "per-tensor":
            options["granularity"] = "per-tensor"
        return {**options, "format": fmt}

    def settings(self) -> list[tuple[PruneConfig | None, QuantConfig | None]]:
        return list(itertools.product(self._prunes(), self._quants()))


@dataclass
class SweepResult:
    table: pd.DataFrame
    cancelled: bool
    seconds: float
    from_store: int
    computed: int


class _Eta:
    """Seconds left: the settings still to compute times the mean time of those computed so far,
    divided by the settings computed at once (an upper bound when some are in the store already)."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self.computed_seconds: list[float] = []

    def left(self, remaining_to_compute: int) -> float | None:
        if not self.computed_seconds:
            return None
        mean = sum(self.computed_seconds) / len(self.computed_seconds)
        return remaining_to_compute * mean / min(self.workers, max(1, remaining_to_compute))


def run_sweep(spec: ModelSpec, grid: SweepGrid, eval_config: EvalConfig | None = None,
              targets: TargetConfig | None = None, store: ResultStore | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              sweep_name: str | None = None, load: RunnerLoader | None = None,
              calib: CalibConfig | None = None, executor: Executor | None = None) -> SweepResult:
    """Run every setting of ``grid`` on ``spec``; returns one row per finished setting.

    ``executor`` runs the settings: by default :class:`LocalExecutor` in this process, with ``load``
    giving the loaded model (default: :meth:`Workbench.load`, once per sweep), called only for
    settings the store does not already hold. ``cancel`` stops new settings from starting: what
    finished is kept (and stored). ``progress`` gets the settings finished by every worker, the
    running ones and the time left."""
    return run_settings(spec, grid.settings(), eval_config, targets, store, progress, cancel, sweep_name, load, calib,
                        executor)


def run_settings(spec: ModelSpec, settings: list[tuple[PruneConfig | None, QuantConfig | None]],
                 eval_config: EvalConfig | None = None, targets: TargetConfig | None = None,
                 store: ResultStore | None = None, progress: Progress | None = None,
                 cancel: threading.Event | None = None, sweep_name: str | None = None,
                 load: RunnerLoader | None = None, calib: CalibConfig | None = None,
                 executor: Executor | None = None) -> SweepResult:
    """:func:`run_sweep` over an explicit list of (prune, quant) settings (e.g. the formats comparison)."""
    start = time.perf_counter()
    eval_config = eval_config or EvalConfig()
    targets = targets or TargetConfig()
    calib = calib or CalibConfig()  # used by the calibrated settings (GPTQ, Wanda, SparseGPT) only
    jobs = [Job(index, config, config.label) for index, config in enumerate(
        RunConfig(model=spec, prune=p, quant=q, targets=targets, eval=eval_config, calib=calib)
        for p, q in settings)]
    executor = executor or LocalExecutor(load)
    rows: dict[int, dict[str, Any]] = {}
    from_store, running, eta = 0, {}, _Eta(executor.workers)
    for event in executor.run(jobs, store, sweep_name, cancel):
        if isinstance(event, Started):
            running[event.job.index] = event.job.label
        else:
            running.pop(event.job.index, None)
            rows[event.job.index] = result_row(event.result, label=event.job.label)
            from_store += event.from_store
            if not event.from_store:
                eta.computed_seconds.append(event.seconds)
        if progress and running:  # a finish with nothing else running is followed by a start, or by "done"
            progress(len(rows), len(jobs), ", ".join(running.values()), eta.left(len(jobs) - len(rows)))
    cancelled = len(rows) < len(jobs)
    if progress and not cancelled:
        progress(len(jobs), len(jobs), "done", 0.0)
    table = mark_pareto(pd.DataFrame([rows[i] for i in sorted(rows)]))
    return SweepResult(table=table, cancelled=cancelled, seconds=time.perf_counter() - start,
                       from_store=from_store, computed=len(rows) - from_store)
