"""One model's runs in a process of its own, streamed back step by step as plain dicts.

Why a process: the dashboard's server also runs Streamlit's script reruns (the live view redraws
once per scored window), chart building and the websocket, all in one interpreter. An engine thread there
shares the GIL with all of it; measured on SmolLM2 (2 cores), the same run took 1.3x longer in a
worker thread than in a main thread even with nothing else to do, and about 1.8x on the page. A
child process has its own interpreter and GIL: the page only waits on a pipe.

:class:`EngineProcess` starts a child that loads the model's :class:`Workbench` once (on the
first request) and then serves requests in order:

- ``steps(config, cancel, target_ci)`` yields ``("loaded", {})`` once the model is in memory,
  then :func:`progressive_run.step_message` tuples (``("compressed", partial)``,
  ``("estimate", dict)``, ``("result", dict)``); a set ``cancel``
  is forwarded to the child, which stops between windows as ``run_steps`` does in-process;
- ``call("module:function", *args)``: ``function(workbench, *args)`` in the child, answered beside
  a run in flight (the weight histogram, a worked block: views that read the original's weights).

An exception in the child is raised again in the caller (memopt's one-line errors keep their
class); a child that dies (out of memory, killed) fails what was waiting with a one-line
:class:`EngineStopped`, and :attr:`alive` turns false so the owner can start a fresh one.
"""
from __future__ import annotations

import copy
import itertools
import os
import pickle
import queue
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

from memopt_core.config import ModelSpec, RunConfig
from memopt_core.errors import MemoptError

POLL_S = 0.05  # how often a waiting caller looks at its cancel token
# The folder that holds memopt_core, so the child imports this same copy of the engine.
ENGINE_ROOT = str(Path(__file__).resolve().parents[2])


class EngineStopped(MemoptError):
    """The engine process ended while a request was waiting on it."""


def portable_error(error: BaseException) -> BaseException:
    """``error`` if it pickles and rebuilds from its pickled form (memopt's errors do; an exception
    whose constructor takes other arguments than its ``args`` does not), else a RuntimeError with
    its first line. ``copy.copy`` rebuilds it as unpickling would, from ``__reduce_ex__``."""
    try:
        pickle.dumps(error)
        copy.copy(error)
        return error
    except Exception:  # noqa: BLE001 - any unpicklable exception is summarised, never lost
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        return RuntimeError(f"{type(error).__name__}: {first_line}")


def _child_environment() -> dict[str, str]:
    paths = [ENGINE_ROOT] + [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class EngineProcess:
    """A child Python process holding ``spec``'s Workbench; every method is safe to call from any thread.

    The child is a plain ``python -m memopt_core.runs.engine_serve``, not a multiprocessing
    spawn: spawn re-runs the parent's ``__main__`` file in the child, and under Streamlit that is
    the page script. Messages are pickled over two pipes."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "memopt_core.runs.engine_serve", str(to_child_read), str(from_child_write)],
            pass_fds=(to_child_read, from_child_write), env=_child_environment(), stdin=subprocess.DEVNULL)
        os.close(to_child_read)
        os.close(from_child_write)
        self._requests = Connection(to_child_write, readable=False)
        self._replies = Connection(from_child_read, writable=False)
        self._send_lock = threading.Lock()
        self._waiting: dict[int, queue.Queue] = {}  # request id -> that caller's replies
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.loaded = False  # set once the child has the model in memory
        self._put(("spec", 0, spec))
        threading.Thread(target=self._dispatch, name="memopt-engine-replies", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def steps(self, config: RunConfig, cancel: Any = None, target_ci: float | None = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Run ``config`` in the child; yields its step messages until the run ends or is cancelled."""
        request_id, replies = self._send("run", config, target_ci)
        cancel_sent = False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                self._put(("cancel", request_id))
                cancel_sent = True
            try:
                kind, payload = replies.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if kind == "end":
                return self._forget(request_id)
            if kind == "error":
                self._forget(request_id)
                raise payload
            yield kind, payload

    def call(self, function: str, *args: Any) -> Any:
        """``function(workbench, *args)`` computed in the child; ``function`` is ``"package.module:name"``
        and its arguments and value must pickle."""
        request_id, replies = self._send("call", function, *args)
        kind, payload = replies.get()
        while kind == "loaded":
            kind, payload = replies.get()
        self._forget(request_id)
        if kind == "error":
            raise payload
        return payload

    def close(self) -> None:
        """Stop the child: a run in flight is cancelled between windows, then it exits."""
        if self.alive:
            try:
                self._put(("stop", 0))
            except OSError:  # it ended meanwhile
                pass

    def _put(self, message: tuple) -> None:
        with self._send_lock:
            self._requests.send(message)

    def _send(self, kind: str, *args: Any) -> tuple[int, queue.Queue]:
        if not self.alive:
            raise EngineStopped(f"the engine process for {self.spec.source} has stopped; run the setting again")
        replies: queue.Queue = queue.Queue()
        with self._lock:
            request_id = next(self._ids)
            self._waiting[request_id] = replies
        self._put((kind, request_id, *args))
        return request_id, replies

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    def _dispatch(self) -> None:
        """Route the child's replies to their callers; when the child dies, fail every waiting caller."""
        while True:
            try:
                request_id, kind, payload = self._replies.recv()
            except (EOFError, OSError):  # the child has gone
                break
            if kind == "loaded":
                self.loaded = True
            with self._lock:
                replies = self._waiting.get(request_id)
            if replies is not None:
                replies.put((kind, payload))
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        hint = " (killed: out of memory?)" if code is not None and code < 0 else ""
        error = EngineStopped(f"the engine process for {self.spec.source} stopped with exit code {code}{hint}; "
                              "run the setting again")
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
        for replies in waiting:
            replies.put(("error", error))
