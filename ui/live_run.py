"""Runs behind the Compress page: one worker thread per browser session, the newest setting wins.

Streamlit reruns the page script on every widget change, so the run cannot live in the script
(DESIGN.md, "Live answers in Streamlit"). A :class:`LiveRun` follows one setting in a daemon
thread: it reads the step messages of a ``runner`` (``ui.loaders.run_steps``: the engine's
``run_steps``, computed in the model's engine process) and writes each into itself under a lock;
the page reads :meth:`LiveRun.snapshot` and redraws. Starting a newer setting sets the older run's
cancel token (checked between windows) and the new worker waits for the old one to stop, so a
session computes one setting at a time. An exact result goes to the shared results store.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import streamlit as st

from memopt_core.config import RunConfig
from ui.errors import error_message

CURRENT = "compress.live_run"  # session state: this session's newest LiveRun
STAGES = ("loading", "compressing", "scoring", "finishing", "done", "cancelled", "failed")


@dataclass(frozen=True)
class LiveState:
    """What the page shows of a run. ``partial``: the result keys known once the copy is built
    (memory, layers, notes); ``estimates``: one dict per scored window (``Estimate.to_dict()``);
    ``result``: the final ``RunResult.to_dict()`` (exact, or an early-stopped estimate)."""

    key: str
    stage: str = "loading"
    partial: dict[str, Any] | None = None
    estimates: tuple[dict[str, Any], ...] = ()
    result: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    stamps: dict[str, float] = field(default_factory=dict)  # stage -> seconds since started

    @property
    def finished(self) -> bool:
        return self.stage in ("done", "cancelled", "failed")


# (config, cancel token, target_ci) -> ("loaded" | "compressed" | "estimate" | "result", dict) messages
Runner = Callable[[RunConfig, threading.Event, "float | None"], Iterator[tuple[str, dict[str, Any]]]]


class LiveRun:
    """One setting followed by a worker thread; every method is safe to call from the page."""

    def __init__(self, config: RunConfig, key: str, runner: Runner,
                 save: Callable[[dict[str, Any]], None] | None, target_ci: float | None = None,
                 previous: "LiveRun | None" = None):
        self.config, self.key, self.target_ci = config, key, target_ci
        self._runner, self._save, self._previous = runner, save, previous
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every update
        self._state = LiveState(key=key)
        self.thread = threading.Thread(target=self._work, name=f"memopt-live-{key[:8]}", daemon=True)

    def start(self) -> "LiveRun":
        self.thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def snapshot(self) -> LiveState:
        with self._lock:
            return self._state

    def wait_for_change(self, seen: LiveState, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until the state is no longer ``seen`` (a snapshot taken
        earlier); True when it changed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state is not seen, timeout)

    def _update(self, **changes: Any) -> None:
        with self._changed:
            stage = changes.get("stage")
            if stage is not None and stage != self._state.stage:
                stamps = {**self._state.stamps, stage: time.perf_counter() - self._state.started}
                changes["stamps"] = stamps
            self._state = replace(self._state, **changes)
            self._changed.notify_all()

    def _work(self) -> None:
        if self._previous is not None:  # one setting at a time per session
            self._previous.cancel()
            self._previous.thread.join()
            self._previous = None
        try:
            if self._cancel.is_set():
                self._update(stage="cancelled")
                return
            self._consume(self._runner(self.config, self._cancel, self.target_ci))
        except Exception as error:  # noqa: BLE001 - shown on the page as one line, never a traceback
            self._update(stage="failed", error=error_message(error))

    def _consume(self, messages: Iterator[tuple[str, dict[str, Any]]]) -> None:
        for kind, payload in messages:
            if kind == "loaded":  # the model is in memory (loaded once, then reused)
                self._update(stage="compressing")
            elif kind == "compressed":
                self._update(stage="scoring", partial=payload)
            elif kind == "estimate":
                self._update(estimates=self.snapshot().estimates + (payload,),
                             stage="finishing" if payload["exact"] else "scoring")
            else:
                result = payload
                if result["compressed"].get("exact", True) and self._save is not None:
                    self._save(result)  # the store keeps exact figures only
                self._update(stage="done", result=result)
        if self.snapshot().stage != "done":
            self._update(stage="cancelled")


def current() -> LiveRun | None:
    """This browser session's newest run, if any."""
    return st.session_state.get(CURRENT)


def start(config: RunConfig, key: str, runner: Runner,
          save: Callable[[dict[str, Any]], None] | None, target_ci: float | None = None) -> LiveRun:
    """Run ``config`` in this session's worker, cancelling the run in flight; a run of the same
    setting (and early-stop choice) that is still going or finished is kept, not restarted."""
    running = current()
    if running is not None and running.key == key and running.target_ci == target_ci \
            and running.snapshot().stage not in ("cancelled", "failed"):
        return running
    if running is not None:
        running.cancel()
    st.session_state[CURRENT] = LiveRun(config, key, runner, save, target_ci, previous=running).start()
    return st.session_state[CURRENT]


def stop() -> None:
    """Cancel this session's run in flight (a setting answered from the store replaces it)."""
    running = current()
    if running is not None and not running.snapshot().finished:
        running.cancel()
