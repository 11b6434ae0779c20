"""The original's rows on a set of windows, scored only when a comparison needs them.

A compressed copy compared window by window needs the original's rows for the same windows. With
the reference stored on disk they are all there; otherwise :class:`OriginalScores` scores the
original one batch ahead of the copy (same loop, ``WindowScorer``), so the first estimate does not
wait for the whole baseline. Several sessions may share one instance: a lock serialises scoring.
"""
from __future__ import annotations

import threading

from torch import Tensor, nn

from memopt_core.evaluation.lm_records import LMMetrics, LMReference
from memopt_core.evaluation.progressive import WindowScorer


class OriginalScores:
    """A reference source (``covering(rows)``) over ``windows`` [n, seq_len] of ``model`` (not changed).

    ``stored``: the original's rows from an earlier run (e.g. from disk); whole windows of it that
    match these windows are not scored again. ``seconds`` counts only scoring done here."""

    def __init__(self, model: nn.Module, windows: Tensor, kl_top_k: int | None, compute: str | None = None,
                 stored: LMReference | None = None, batch_size: int | None = None):
        self.scorer = WindowScorer(model, windows, None, kl_top_k, batch_size, compute=compute)
        if stored is not None:
            self.scorer.resume_from(stored)
        self.resumed_windows = self.scorer.scored_windows
        self._lock = threading.Lock()
        self._joined: LMReference | None = None

    @property
    def complete(self) -> bool:
        return self.scorer.scored_windows == self.scorer.total_windows or bool(self.scorer.reason)

    @property
    def seconds(self) -> float:
        return self.scorer.seconds

    @property
    def kl_method(self) -> str:
        return "exact" if self.scorer.kl_top_k is None else f"top-{self.scorer.kl_top_k} + rest bucket"

    def covering(self, rows: int) -> LMReference:
        """The original's rows, scoring windows until at least ``rows`` rows are held."""
        with self._lock:
            windows = -(-rows // self.scorer.per_window)
            if self.scorer.scored_windows < windows:
                self.scorer.advance(windows)
                self._joined = None
            if self._joined is None:
                self._joined = self.scorer.result()[1]
            return self._joined

    def finish(self) -> tuple[LMMetrics, LMReference]:
        """Score every remaining window; the original's exact metrics and its full reference."""
        self.covering(self.scorer.targets.numel())
        with self._lock:
            return self.scorer.result()
