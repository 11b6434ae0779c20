"""Sweeps on a Ray cluster (Ray core): each setting is a task on a long-lived worker.

A worker is a Ray actor with ``cpus_per_worker`` CPUs that sets torch's threads to them (more
threads than CPUs is the classic way to make parallel runs slower than one). It loads the model
at its first setting the store lacks and keeps it for the next ones, and writes every result to
the results store itself the moment it is computed: the store stays the single source of truth,
whichever process finishes. The driver sends one setting per idle worker, so a cancel stops new
ones at once; results arrive in any order and each counts toward the progress at once.

A worker that dies loses only its setting in flight: Ray restarts the worker and the driver
sends that setting again (once; a second death ends the sweep, whose finished settings are
stored, so a rerun resumes it). A killed driver leaves the store as complete as its workers got.

Without an address, Ray starts a local cluster that can only be reached from this machine:
bound to 127.0.0.1, no dashboard, no usage statistics. With one, it joins that cluster; its
workers then need memopt's dependencies, the model at the same path (or the bundled packages)
and the results database on a disk they all share (see the README).

Ray is imported inside the functions that use it: importing it takes seconds, and a sweep run in
this process (the default executor) never needs it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator

import torch

import memopt_core
from memopt_core.config import ClusterConfig, RunConfig
from memopt_core.errors import ConfigError, MemoptError
from memopt_core.runs.executors import Event, Finished, Job, Started, load_once
from memopt_core.runs.store import ResultStore
from memopt_core.runs.stored import config_key, stored_run

# Read by Ray when it is imported and when it starts a cluster: loopback addresses only
# (Ray's own switch, named for laptops), and no usage statistics sent anywhere.
LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
FORWARDED_ENV = ("MEMOPT_CACHE", "MEMOPT_STORE_JOURNAL", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
WORKER_RESTARTS = 3
ATTEMPTS = 2  # a setting whose worker dies is sent once more
RESTART_WAIT_S = 300.0


def connect(cluster: ClusterConfig, num_cpus: int | None = None) -> None:
    """Join ``cluster.address``, or start the local cluster (with ``num_cpus``, default all of this
    machine's); nothing when Ray is connected already."""
    if cluster.address is None:
        for key, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(key, value)
    import ray  # about a second to import, and its settings above must be in place first

    if ray.is_initialized():
        return
    # memopt's own code travels with the job, so a cluster needs only its dependencies installed.
    code = {"py_modules": [os.path.dirname(memopt_core.__file__)], "excludes": ["__pycache__"]}
    options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                   runtime_env=code)
    try:
        if cluster.address is None:
            ray.init(_node_ip_address="127.0.0.1", num_cpus=num_cpus, **options)
        else:
            ray.init(address=cluster.address, **options)
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exceptions too (e.g. a start-up timeout)
        where = cluster.address or "a local cluster"
        raise ConfigError(f"cannot start or reach the Ray cluster at {where}: {str(error).splitlines()[0]}") from None


class SettingWorker:
    """One Ray worker: a results store handle and, after its first computed setting, the model."""

    def __init__(self, db_path: str | None, threads: int) -> None:
        torch.set_num_threads(threads)
        self.store = ResultStore(db_path) if db_path is not None else None
        self.load = load_once()

    def pid(self) -> int:
        return os.getpid()

    def run(self, config: RunConfig, sweep_name: str | None) -> tuple[dict[str, Any], bool, float]:
        """(result, whether the store already held it, seconds) of one setting, stored before returning."""
        began = time.perf_counter()
        run = stored_run(config, self.store, self.load, sweep_name)
        return run.result, run.from_store, time.perf_counter() - began


def _restarted_pid(worker: Any) -> int:
    """The process id of ``worker`` once Ray has restarted it (calls fail while it restarts)."""
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + RESTART_WAIT_S
    while True:
        try:
            return ray.get(worker.pid.remote())
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise MemoptError(f"a Ray worker did not restart within {RESTART_WAIT_S:.0f} s") from None
            time.sleep(0.2)


class RayExecutor:
    """Runs a sweep's settings on the workers of a Ray cluster (see the module docstring).

    ``reruns`` lists the settings sent again after their worker died; ``running_pids()`` says
    which worker process runs which setting now."""

    def __init__(self, cluster: ClusterConfig | None = None) -> None:
        self.cluster = cluster or ClusterConfig()
        self.workers = self.cluster.workers or 1  # the real count is known once connected
        self.reruns: list[str] = []
        self._pids: dict[Any, int] = {}
        self._running: dict[Any, tuple[Job, Any, int]] = {}  # task -> (job, worker, attempt)

    def running_pids(self) -> dict[int, str]:
        """``{worker process id: label}`` of the settings in flight, oldest first."""
        return {self._pids[worker]: job.label for job, worker, _ in self._running.values()}

    def _start_workers(self, jobs: int, store: ResultStore | None) -> list[Any]:
        import ray  # imported by connect() already

        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_worker = self.cluster.cpus_per_worker
        if per_worker > cpus:
            raise ConfigError(f"{per_worker} CPUs per worker is more than the cluster's {cpus}")
        self.workers = max(1, min(self.cluster.workers or cpus // per_worker, jobs))
        env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
        # Read when each worker starts: the cache and store settings of this driver, as they are now.
        runtime_env = {"env_vars": env}
        actor = ray.remote(SettingWorker).options(num_cpus=per_worker, max_restarts=WORKER_RESTARTS,
                                                  max_task_retries=0, runtime_env=runtime_env)
        workers = [actor.remote(str(store.path) if store is not None else None, per_worker)
                   for _ in range(self.workers)]
        self._pids = dict(zip(workers, ray.get([w.pid.remote() for w in workers])))
        return workers

    def _submit(self, job: Job, worker: Any, attempt: int, sweep_name: str | None) -> None:
        self._running[worker.run.remote(job.config, sweep_name)] = (job, worker, attempt)

    def _collect(self, sweep_name: str | None) -> tuple[Finished | None, Any]:
        """Wait for one setting to finish: (its event, its worker), or (None, worker) when the
        worker died and the setting was sent to it again (Ray restarts it)."""
        import ray
        from ray.exceptions import RayActorError

        done, _ = ray.wait(list(self._running), num_returns=1)
        job, worker, attempt = self._running.pop(done[0])
        try:
            result, cached, seconds = ray.get(done[0])
        except RayActorError as error:
            if attempt >= ATTEMPTS:
                raise MemoptError(f"a Ray worker died twice running {job.label!r}; the finished settings are "
                                  f"stored: rerun the sweep to resume ({str(error).splitlines()[0]})") from None
            self.reruns.append(job.label)
            self._pids[worker] = _restarted_pid(worker)
            self._submit(job, worker, attempt + 1, sweep_name)
            return None, worker
        return Finished(job, result, cached, seconds), worker

    def run(self, jobs: list[Job], store: ResultStore | None, sweep_name: str | None,
            cancel: threading.Event | None) -> Iterator[Event]:
        connect(self.cluster)
        import ray

        pending = []
        for job in jobs:  # the store answers first: only what it lacks goes to the cluster
            found = store.get(config_key(job.config)) if store is not None else None
            if found is not None:
                yield Finished(job, found, True, 0.0)
            else:
                pending.append(job)
        if not pending:
            return
        workers = self._start_workers(len(pending), store)
        try:
            idle = list(workers)
            while pending or self._running:
                while idle and pending and not (cancel is not None and cancel.is_set()):
                    job = pending.pop(0)
                    self._submit(job, idle.pop(0), 1, sweep_name)
                    yield Started(job)
                if not self._running:
                    return  # cancelled: nothing in flight any more
                finished, worker = self._collect(sweep_name)
                if finished is not None:
                    idle.append(worker)
                    yield finished
        finally:
            self._running.clear()
            for worker in workers:
                ray.kill(worker)
