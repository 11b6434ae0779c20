"""A recovery running in a worker thread, one per browser session, and the thread-safe holder the
page's live fragment reads (DESIGN.md: long work never lives in the page script).

The worker runs the engine's ``stored_recovery`` with a cancel event; every phase and training step
lands in the holder under a lock; a finished, stopped or failed run leaves its result (or one-line
error) there. Stopping keeps the best checkpoint: the engine measures and stores it."""
from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from typing import TYPE_CHECKING

from memopt_core.config import RunConfig
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.runs.store import ResultStore
from ui.errors import error_message

if TYPE_CHECKING:
    from memopt_core.recovery.distill import Update


class RecoveryJob:
    """One recovery of ``config`` with ``recovery`` settings; :meth:`start` it, read :meth:`snapshot`."""

    def __init__(self, config: RunConfig, recovery: RecoveryConfig) -> None:
        self.config, self.recovery = config, recovery
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"phase": "Starting", "step": 0, "steps": recovery.steps, "loss": None,
                                       "seconds": 0.0, "points": [], "result": None, "from_store": False,
                                       "error": None, "done": False}
        self.thread: threading.Thread | None = None

    def start(self, bench, store: ResultStore | None) -> None:
        """Run in a daemon thread on ``bench`` (a loaded Workbench), storing into ``store``."""
        self.thread = threading.Thread(target=self._work, args=(bench, store), daemon=True,
                                       name="memopt-recovery")
        self.thread.start()

    def _work(self, bench, store: ResultStore | None) -> None:
        # Imported here, in the worker: the runner pulls in transformers, which the page itself spares.
        from memopt_core.recovery.recover import stored_recovery

        try:
            result, from_store = stored_recovery(self.config, self.recovery, store, lambda: bench, cancel=self.cancel,
                                                 on_phase=self._phase, on_update=self._update)
            self._set(result=result, from_store=from_store, phase="Done")
        except Exception as error:  # noqa: BLE001 - whatever happens, the page shows one line
            self._set(error=error_message(error), phase="Failed")
        finally:
            self._set(done=True)

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._state.update(fields)

    def _phase(self, text: str) -> None:
        self._set(phase=text)

    def _update(self, update: "Update") -> None:
        with self._lock:
            self._state.update(step=update.step, loss=update.loss, seconds=update.seconds)
            if update.point is not None:
                self._state["points"] = [*self._state["points"], asdict(update.point)]

    def stop(self) -> None:
        """Ask the worker to stop after the current step (the best checkpoint is kept)."""
        self.cancel.set()
        self._set(phase="Stopping after this step; the best checkpoint will be measured and stored")

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the state for drawing."""
        with self._lock:
            return dict(self._state)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (tests, shutdown); True when it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.snapshot()["done"]
