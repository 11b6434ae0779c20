"""The child's side of :mod:`memopt_core.runs.engine_process`: load the Workbench once, run
settings one at a time in the main thread, answer cancels and calls (weight views) from a reader thread.

Every reply is ``(request_id, kind, payload)``: ``kind`` is ``"loaded"`` (the model is in memory,
the request's work begins), a step message kind, ``"value"`` (of a call), ``"error"`` (payload: the
exception, picklable) or ``"end"`` (the request is over).
"""
from __future__ import annotations

import gc
import importlib
import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from memopt_core.config import ModelSpec, RunConfig
from memopt_core.runs.engine_process import portable_error
from memopt_core.runs.progressive_run import step_message
from memopt_core.runs.workbench import Workbench


def freeze_what_is_loaded() -> None:
    """Take every object alive now (the loaded model, torch, transformers: about 480,000 objects
    with SmolLM2) out of the garbage collector's view, for a process that keeps its model until it
    exits, as this one does. Every full collection then skips them: the two that make the memory
    measurement honest (``compression/memory.py``) took 0.26 s each, and compressing SmolLM2 at W6
    g128 took 1.7-2.0 s instead of 2.9 s, with the same measured bytes. Frozen objects are never
    collected as cycles, so a process that drops models (the in-server engine) must not call this."""
    gc.collect()
    gc.freeze()


def resolve(function: str):
    """``"package.module:name"`` -> that module-level function."""
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


class Server:
    def __init__(self, spec: ModelSpec, replies: Connection):
        self.spec, self._replies = spec, replies
        self._reply_lock = threading.Lock()  # the main thread and weight views both reply
        self._bench: Workbench | None = None
        self._load_lock = threading.Lock()
        self._runs: queue.Queue = queue.Queue()  # (request_id, config, target_ci); None stops
        self._cancels: dict[int, threading.Event] = {}

    def serve(self, requests) -> None:
        """Run settings in arrival order until a "stop" request (or the parent goes away)."""
        threading.Thread(target=self._read, args=(requests,), name="memopt-engine-requests", daemon=True).start()
        while (request := self._runs.get()) is not None:
            self._run(*request)

    def _read(self, requests) -> None:
        while True:
            try:
                kind, request_id, *args = requests.recv()
            except (EOFError, OSError):  # the parent is gone
                kind, request_id = "stop", 0
            if kind == "run":
                self._cancels[request_id] = threading.Event()
                self._runs.put((request_id, *args))
            elif kind == "cancel" and request_id in self._cancels:
                self._cancels[request_id].set()
            elif kind == "call":  # beside a run in flight: a histogram must not wait for a whole evaluation
                threading.Thread(target=self._call, args=(request_id, *args), daemon=True).start()
            elif kind == "stop":
                for cancel in list(self._cancels.values()):
                    cancel.set()
                self._runs.put(None)
                return

    def _reply(self, request_id: int, kind: str, payload: Any) -> None:
        with self._reply_lock:
            try:
                self._replies.send((request_id, kind, payload))
            except OSError:  # the parent is gone; the reader stops us
                pass

    def _workbench(self) -> Workbench:
        with self._load_lock:
            if self._bench is None:
                self._bench = Workbench.load(self.spec)
                freeze_what_is_loaded()
            return self._bench

    def _run(self, request_id: int, config: RunConfig, target_ci: float | None) -> None:
        cancel = self._cancels[request_id]
        try:
            if not cancel.is_set():  # replaced before it started
                bench = self._workbench()
                self._reply(request_id, "loaded", {})
                for step in bench.run_steps(config, cancel=cancel, target_ci=target_ci):
                    self._reply(request_id, *step_message(step))
        except Exception as error:  # noqa: BLE001 - every failure goes back to the caller, as its own class
            self._reply(request_id, "error", portable_error(error))
        finally:
            self._cancels.pop(request_id, None)
            self._reply(request_id, "end", None)

    def _call(self, request_id: int, function: str, *args: Any) -> None:
        try:
            bench = self._workbench()
            self._reply(request_id, "loaded", {})
            self._reply(request_id, "value", resolve(function)(bench, *args))
        except Exception as error:  # noqa: BLE001 - as in _run
            self._reply(request_id, "error", portable_error(error))


def main(requests_fd: int, replies_fd: int) -> None:
    """Entry point of ``python -m memopt_core.runs.engine_serve IN OUT`` (file descriptors of two pipes)."""
    requests, replies = Connection(requests_fd, writable=False), Connection(replies_fd, readable=False)
    kind, _, spec = requests.recv()
    assert kind == "spec", kind  # the parent's first message names the model
    Server(spec, replies).serve(requests)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
