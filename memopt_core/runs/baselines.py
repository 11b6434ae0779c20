"""The original's side of every comparison, per evaluation config, computed once and kept on disk.

For a causal LM: the evaluation windows, the original's per-token rows (scored lazily, one batch
ahead of the copy that needs them, then saved), its zero-shot label scores and its generation.
Each is stored in the :class:`ReferenceStore` under the model's fingerprint and the protocol, so
a new process or a restarted server loads them instead of scoring the original again. Encoders and
classifiers keep their (small) reference in memory.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import asdict
from typing import Any

import torch

from memopt_core.config import EvalConfig
from memopt_core.evaluation.causal_lm import (SENTIMENT_LABELS, SENTIMENT_PROMPT, greedy_generate,
                                             sentiment_accuracy, zero_shot_scores)
from memopt_core.evaluation.compute import compute_in
from memopt_core.evaluation.lm_records import LMReference
from memopt_core.evaluation.original_scores import OriginalScores
from memopt_core.evaluation.quality import EvalData, Reference, evaluate, prepare
from memopt_core.evaluation.reference_store import ReferenceStore, reference_from_tensors, reference_tensors
from memopt_core.loading.models import LoadedModel
from memopt_core.runs.identity import reference_identity


def _sentences_sha(sentences: list[tuple[str, int]]) -> str:
    return hashlib.sha256(repr(sentences).encode()).hexdigest()


class OriginalEvaluation:
    """The original's figures for one EvalConfig; every part computed at most once, thread-safe.

    ``seconds`` is the time this process spent scoring the original (0 when all came from disk)."""

    def __init__(self, loaded: LoadedModel, config: EvalConfig, store: ReferenceStore | None):
        self.loaded, self.config, self.store = loaded, config, store
        self.data: EvalData = prepare(loaded, config)
        self.data.protocol["compute_dtype"] = config.compute_dtype or loaded.spec.dtype
        self._lock = threading.RLock()
        self._extras: dict[str, Any] = {}
        self._other: Reference | None = None
        self._extra_seconds = 0.0
        self._saved_windows = 0
        self.lm: OriginalScores | None = None
        if loaded.kind == "causal-lm":
            stored = self._load_lm()
            self.lm = OriginalScores(loaded.model, self.data.windows, config.kl_top_k, config.compute_dtype, stored)
            self._saved_windows = self.lm.resumed_windows

    @property
    def seconds(self) -> float:
        return self._extra_seconds + (self.lm.seconds if self.lm is not None else 0.0)

    def _key(self, kind: str, **protocol: Any) -> dict[str, Any]:
        compute = self.config.compute_dtype or self.loaded.spec.dtype
        return reference_identity(self.loaded.spec, kind, compute=compute, **protocol)

    def _lm_key(self) -> dict[str, Any]:
        # No max_tokens: windows are a prefix of the text's tokens, so a longer run's rows serve a shorter one.
        return self._key("lm-windows", text=self.data.protocol["text_sha256"], seq_len=self.config.seq_len,
                         kl_top_k=self.config.kl_top_k)

    def _load_lm(self) -> LMReference | None:
        found = self.store.load(self._lm_key()) if self.store is not None else None
        return reference_from_tensors(found[0]) if found is not None else None

    def save(self) -> None:
        """Store the original's rows when more windows are complete than stored (never fewer)."""
        if self.store is None or self.lm is None:
            return
        with self._lock:
            windows = self.lm.scorer.scored_windows
            if not self.lm.complete or self.lm.scorer.reason or windows <= self._saved_windows:
                return
            stored = self._load_lm()
            if stored is not None and stored.tokens >= windows * self.lm.scorer.per_window:
                self._saved_windows = windows
                return
            reference = self.lm.covering(windows * self.lm.scorer.per_window)
            self.store.save(self._lm_key(), reference_tensors(reference), {"windows": windows})
            self._saved_windows = windows

    def _extra(self, name: str, key: dict[str, Any], compute) -> Any:
        """A stored extra (zero-shot scores, generation), loaded or computed and stored, once."""
        with self._lock:
            if name not in self._extras:
                found = self.store.load(key) if self.store is not None else None
                if found is None:
                    began = time.perf_counter()
                    tensors, meta = compute()
                    self._extra_seconds += time.perf_counter() - began
                    if self.store is not None:
                        self.store.save(key, tensors, meta)
                    found = tensors, meta
                self._extras[name] = found
            return self._extras[name]

    def zero_shot(self) -> dict[str, Any]:
        """The original's zero-shot sentiment accuracy (AccuracyResult as a dict)."""
        key = self._key("zero-shot", sentences=_sentences_sha(self.data.sentences), prompt=SENTIMENT_PROMPT,
                        labels=list(SENTIMENT_LABELS))
        tensors, _ = self._extra("zero_shot", key, lambda: ({"scores": self._zero_shot_scores()}, {}))
        return asdict(sentiment_accuracy(tensors["scores"], self.data.sentences))

    def _zero_shot_scores(self) -> torch.Tensor:
        model = self.loaded.model
        with compute_in(model, self.config.compute_dtype):
            return zero_shot_scores(model, self.loaded.tokenizer, self.data.sentences)

    def generation(self) -> dict[str, str]:
        key = self._key("generation", prompt=self.config.prompt, gen_tokens=self.config.gen_tokens)

        def generate():
            with compute_in(self.loaded.model, self.config.compute_dtype):
                text = greedy_generate(self.loaded.model, self.loaded.tokenizer, self.config.prompt,
                                       self.config.gen_tokens)
            return {}, {"text": text}

        _, meta = self._extra("generation", key, generate)
        return {"prompt": self.config.prompt, "text": meta["text"]}

    def lm_metrics(self, complete: bool = True) -> dict[str, Any]:
        """The original's window metrics: over every window (scoring what is missing) or, with
        ``complete=False``, over the windows scored so far (an estimate unless that is all)."""
        if complete:
            metrics, _ = self.lm.finish()
            self.save()
        else:
            metrics, _ = self.lm.scorer.result()
        return asdict(metrics)

    def metrics(self, complete: bool = True) -> dict[str, Any]:
        """Everything the run reports as ``baseline``: window metrics, zero-shot, generation."""
        if self.lm is None:
            return self.other().metrics
        out = self.lm_metrics(complete)
        if self.config.zero_shot:
            out["zero_shot"] = self.zero_shot()
        if self.config.gen_tokens:
            out["generation"] = self.generation()
        return out

    def other(self) -> Reference:
        """Encoders and classifiers: the original's reference (embeddings, probe), in memory."""
        with self._lock:
            if self._other is None:
                began = time.perf_counter()
                _, self._other = evaluate(self.loaded.model, self.loaded, self.data, self.config)
                self._extra_seconds += time.perf_counter() - began
            return self._other

    def reference(self) -> Reference:
        """The complete reference for :func:`memopt_core.evaluation.quality.evaluate` (all windows)."""
        if self.lm is None:
            return self.other()
        metrics = self.metrics()
        return Reference(metrics=metrics, lm=self.lm.covering(self.lm.scorer.targets.numel()))
