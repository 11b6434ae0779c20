"""Who runs a sweep's settings: this process one after another (:class:`LocalExecutor`), or the
workers of a Ray cluster side by side (``memopt_core.runs.ray_executor.RayExecutor``).

An executor turns the settings the results store does not hold yet into a stream of events:
:class:`Started` when a setting begins, :class:`Finished` when its result is in the store. The
sweep (``memopt_core.runs.sweep.run_sweep``) turns the stream into rows, progress and an ETA, so
both executors show the same progress bar. The store stays the single source of truth: every
result is written there by whoever computed it, as soon as it is computed.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Union

from memopt_core.config import RunConfig
from memopt_core.runs.store import ResultStore
from memopt_core.runs.stored import RunnerLoader, stored_run


@dataclass(frozen=True)
class Job:
    """One setting of a sweep: its position in the grid, its config and its label."""

    index: int
    config: RunConfig
    label: str


@dataclass(frozen=True)
class Started:
    job: Job


@dataclass(frozen=True)
class Finished:
    """``result`` is ``RunResult.to_dict()``; ``from_store``: answered by the store, not computed;
    ``seconds``: the time the setting took where it ran."""

    job: Job
    result: dict[str, Any]
    from_store: bool
    seconds: float


Event = Union[Started, Finished]


class Executor(Protocol):
    """Runs jobs and yields their events; stops starting new ones once ``cancel`` is set (the
    ones already running finish and are stored)."""

    workers: int  # settings computed at the same time, for the ETA

    def run(self, jobs: list[Job], store: ResultStore | None, sweep_name: str | None,
            cancel: threading.Event | None) -> Iterator[Event]: ...


def load_once() -> RunnerLoader:
    """A loader that loads the sweep's one model on first use and then reuses it."""
    # torch + transformers load here, on the first setting to compute: a sweep answered from the
    # store needs neither.
    from memopt_core.runs.workbench import Workbench

    return functools.cache(Workbench.load)


class LocalExecutor:
    """Settings one after another in this process, on one loaded model (``load`` gives it; default
    :func:`load_once`: loaded at the first setting the store lacks)."""

    workers = 1

    def __init__(self, load: RunnerLoader | None = None) -> None:
        self.load = load

    def run(self, jobs: list[Job], store: ResultStore | None, sweep_name: str | None,
            cancel: threading.Event | None) -> Iterator[Event]:
        load = self.load or load_once()
        for job in jobs:
            yield Started(job)
            if cancel is not None and cancel.is_set():
                return
            began = time.perf_counter()
            run = stored_run(job.config, store, load, sweep_name)
            yield Finished(job, run.result, run.from_store, time.perf_counter() - began)
