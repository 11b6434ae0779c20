"""The one scoring loop of causal LMs: windows in order, an estimate after each, the exact figure last.

Perplexity protocol (DESIGN.md): exp(mean token NLL) over the given non-overlapping windows, each
window evaluated on its own, so a window of ``seq_len`` tokens gives ``seq_len - 1`` predictions.
Log-softmax is taken in float32 whatever dtype the model computes in.

:class:`WindowScorer` scores a batch of windows at a time and, after each window, yields an
:class:`Estimate`: perplexity, and against a reference (the original's per-token rows) the ratio
of perplexities on the same tokens from the paired per-token NLL difference, the KL divergence and
top-1 agreement, each with a 95% interval (``intervals.py``). On CPU, after the first batch, two
batches are scored side by side (``side_by_side.py``). A cancel token is checked between rounds of
batches; ``target_ci`` stops once the ratio's interval is within +-target. Nothing is shuffled: the
k-th estimate always covers the first k windows, and the last one is the exact figure
:func:`evaluate_causal_lm` returns (it is this loop, consumed to the end).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import partial
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from memopt_core.config.evaluation import SLICE_ELEMENTS
from memopt_core.errors import ConfigError, DataError
from memopt_core.evaluation.compute import compute_in, model_device, synchronize
from memopt_core.evaluation.intervals import DEFAULT_INTERVAL, check_method, mean_interval
from memopt_core.evaluation.lm_records import Estimate, LMMetrics, LMReference
from memopt_core.evaluation.logit_slices import logit_slices, slice_rows, vocab_size
from memopt_core.evaluation.side_by_side import side_by_side, worker_count
from memopt_core.evaluation.stats import rest_log_mass

# Float32 logits per batch (64 MiB). On CPU one 512-token window with a 49k vocabulary already
# fills the budget, and measured throughput there drops with larger batches, so only
# small-vocabulary models get batched.
_LOGITS_BUDGET = 1 << 24


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. a ``threading.Event``: set it to stop between windows (after
    the batches being scored side by side)."""

    def is_set(self) -> bool: ...


class ReferenceSource(Protocol):
    """An LMReference, or something that scores the original on demand (``runs/references.py``)."""

    kl_method: str

    def covering(self, rows: int) -> LMReference: ...


def check_windows(windows: Tensor) -> Tensor:
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        raise DataError(f"token windows must be a tensor [n_windows >= 1, seq_len >= 2], got {shape}")
    return windows.long()


def _check_reference(reference: LMReference, targets: Tensor) -> None:
    if reference.diverged:
        raise DataError("the reference model diverged (NaN/Inf logits); KL needs a reference with finite perplexity")
    if reference.tokens != targets.numel() or not torch.equal(reference.targets, targets):
        raise DataError(f"the reference holds {reference.tokens} predictions of other windows than these "
                        f"({targets.numel()}); evaluate both models on the same windows")


def _check_options(kl_top_k: int | None, batch_size: int | None, target_ci: float | None,
                   workers: int | None = None) -> None:
    for name, value in (("kl_top_k", kl_top_k), ("batch size", batch_size), ("workers", workers)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} {value!r} must be a positive whole number or None")
    if target_ci is not None and not (isinstance(target_ci, (int, float)) and 0 < target_ci < 1):
        raise ConfigError(f"target interval {target_ci!r} must be a fraction between 0 and 1 (0.02 = +-2%)")


def auto_batch_size(model: nn.Module, windows: Tensor) -> int:
    """Windows per forward so that the float32 logits stay within about 64 MiB."""
    return max(1, min(windows.shape[0], _LOGITS_BUDGET // (windows.shape[1] * vocab_size(model))))


def _reference_part(log_probs: Tensor, top1: Tensor, nll: Tensor, kl_top_k: int | None) -> dict[str, Tensor]:
    """The rows of an LMReference for one batch: log-probs [T, V], argmax [T], NLL [T] -> CPU tensors."""
    part = {"top1": top1.cpu(), "nll": nll.cpu()}
    if kl_top_k is None:
        return {**part, "log_probs": log_probs.cpu()}
    top_log_probs, top_ids = log_probs.topk(min(kl_top_k, log_probs.shape[-1]), dim=-1)  # [T, k]
    return {**part, "top_ids": top_ids.cpu(), "top_log_probs": top_log_probs.cpu(),
            "rest_log_prob": rest_log_mass(log_probs, top_ids).cpu()}


class WindowScorer:
    """Scores ``model`` on ``windows`` [n_windows, seq_len] in order (the model is not changed).

    With ``reference`` (the original's LMReference on the same windows, or a source that scores
    the original on demand) also the paired ratio, KL per token and top-1 agreement; the reference
    decides exact or top-k KL. The scorer keeps its own per-token rows as an LMReference (full
    log-probs when ``kl_top_k`` is None, else the top ``kl_top_k``). ``compute``: "compute in"
    dtype (None: as the weights are held). NaN/Inf logits never raise: scoring stops, ``diverged``.
    ``workers``: batches scored side by side after the first (``side_by_side.py``; None: as many as
    suit the model's device), each with its share of torch's threads; the figures are the same.
    """

    def __init__(self, model: nn.Module, windows: Tensor, reference: ReferenceSource | None = None,
                 kl_top_k: int | None = 64, batch_size: int | None = None, interval: str = DEFAULT_INTERVAL,
                 compute: str | None = None, slice_elements: int = SLICE_ELEMENTS, workers: int | None = None):
        _check_options(kl_top_k, batch_size, None, workers)
        self.model, self.windows = model, check_windows(windows)
        self.targets = self.windows[:, 1:].reshape(-1)  # [N]
        self.reference, self.kl_top_k, self.compute = reference, kl_top_k, compute
        self.interval = check_method(interval)
        if isinstance(reference, LMReference):
            _check_reference(reference, self.targets)
        self.batch_size = batch_size or auto_batch_size(model, self.windows)
        # float32 logits of a batch, three times over: the logits, a slice's log-softmax, activations
        batch_bytes = 3 * 4 * self.batch_size * self.windows.shape[1] * vocab_size(model)
        self.workers = workers or worker_count(model, batch_bytes)
        self.slice_rows = slice_rows(model, slice_elements)
        self.per_window = self.windows.shape[1] - 1
        self.reason, self.seconds, self.scored_windows = "", 0.0, 0
        # Per-token figures, one float64 CPU tensor per batch: nll, correct (0/1) and, against a
        # reference, kl, agree (0/1) and diff (own NLL - reference NLL: the paired difference).
        self._rows: dict[str, list[Tensor]] = {name: [] for name in ("nll", "correct", "kl", "agree", "diff")}
        self._parts: list[dict[str, Tensor]] = []  # this model's own reference rows, per batch

    @property
    def total_windows(self) -> int:
        return self.windows.shape[0]

    def _reference_rows(self, rows: int) -> LMReference:
        reference = self.reference.covering(rows)
        if reference.diverged:
            raise DataError("the reference model diverged (NaN/Inf logits); KL needs a reference with finite perplexity")
        start = self.scored_windows * self.per_window
        if not torch.equal(reference.targets[start:rows], self.targets[start:rows]):
            raise DataError("the reference was scored on other windows than these; evaluate both models on the same windows")
        return reference

    def _score_rows(self, log_probs: Tensor, targets: Tensor, start: int,
                    reference: LMReference | None) -> tuple[dict[str, Tensor], dict]:
        """The per-token figures of rows ``start:start+T`` and this model's own reference rows for
        them: log-probs [T, V], targets [T]; ``reference`` covers at least those rows."""
        count = len(targets)
        top1 = log_probs.argmax(-1)  # [T]
        nll = -log_probs.gather(-1, targets[:, None]).squeeze(1).double()  # [T]
        rows = {"nll": nll.cpu(), "correct": (top1 == targets).double().cpu()}
        if reference is not None:
            rows.update(kl=reference.kl(start, log_probs).double().cpu(),
                        agree=(top1.cpu() == reference.top1[start:start + count]).double(),
                        diff=rows["nll"] - reference.nll[start:start + count])
        return rows, _reference_part(log_probs, top1, nll, self.kl_top_k)

    def _score_batch(self, first: int, reference: LMReference | None) -> list[tuple[dict[str, Tensor], dict]] | str:
        """The per-token figures of the batch of windows from ``first`` on, made and scored a slice
        of positions at a time (``logit_slices``: no window's whole logits exist where the head can
        be applied apart); each row's log-softmax and figures depend on that row alone. Returns the
        figures per slice, or why not when some logits are NaN or Inf.

        Changes nothing on the scorer, so batches may be scored side by side. Inference mode and the
        compute dtype are entered here (both are per thread), never across a ``yield``: the
        consumer of :meth:`steps` must not run inside them."""
        batch = self.windows[first:first + self.batch_size]  # [B, S]
        targets = batch[:, 1:].reshape(-1)  # [B*(S-1)]
        start = first * self.per_window
        kept: list[tuple[dict[str, Tensor], dict]] = []
        with torch.inference_mode(), compute_in(self.model, self.compute):
            for piece in logit_slices(self.model, batch.to(model_device(self.model)), self.slice_rows):
                if not torch.isfinite(piece).all():  # piece: [<= slice_rows, V]
                    return (f"logits contain NaN or Inf in windows {first}-{first + len(batch) - 1}: "
                            "the weights or the dtype's range broke the model")
                count = piece.shape[0]
                kept.append(self._score_rows(piece.float().log_softmax(-1), targets[:count], start, reference))
                targets, start = targets[count:], start + count
        return kept

    def _round_starts(self) -> list[int]:
        """First windows of the batches scored next, side by side: one batch alone for the very
        first estimate, then up to ``workers`` batches at a time."""
        starts = range(self.scored_windows, self.total_windows, self.batch_size)
        return list(starts[:1 if self.scored_windows == 0 else self.workers])

    def _advance_round(self) -> tuple[int, int] | None:
        """Score the next batches (see :meth:`_round_starts`) and keep them in window order, up to
        one whose logits are not finite (``reason`` says why); (first, last) window numbers kept,
        or None when none was."""
        first, starts = self.scored_windows, self._round_starts()
        end = min(self.total_windows, starts[-1] + self.batch_size)
        # A lazy reference scores the original first, here in the caller's thread, timed apart.
        reference = self._reference_rows(end * self.per_window) if self.reference is not None else None
        device = model_device(self.model)
        began = time.perf_counter()
        outcomes = side_by_side([partial(self._score_batch, start, reference) for start in starts])
        synchronize(device)
        self.seconds += time.perf_counter() - began
        for start, outcome in zip(starts, outcomes):
            if isinstance(outcome, str):
                self.reason = outcome
                break
            for rows, part in outcome:
                for name, values in rows.items():
                    self._rows[name].append(values)
                self._parts.append(part)
            self.scored_windows = min(self.total_windows, start + self.batch_size)
        return (first, self.scored_windows) if self.scored_windows > first else None

    def advance(self, windows: int) -> None:
        """Score (without estimates) until at least ``windows`` windows are scored or it diverges."""
        while self.scored_windows < min(windows, self.total_windows) and not self.reason:
            self._advance_round()

    def resume_from(self, reference: LMReference) -> None:
        """Count the whole windows of ``reference`` (this model's own rows from an earlier run, e.g.
        from disk, same ``kl_top_k``) as scored, when its targets are these windows' first targets."""
        if self.scored_windows or self.reference is not None:
            raise ValueError("resume_from needs a fresh scorer without a reference")
        windows = min(reference.tokens // self.per_window, self.total_windows)
        rows = windows * self.per_window
        if reference.diverged or windows == 0 or not torch.equal(reference.targets[:rows], self.targets[:rows]):
            return
        self._rows["nll"] = [reference.nll[:rows].double()]
        self._rows["correct"] = [(reference.top1[:rows] == self.targets[:rows]).double()]
        self._parts = [{k: v[:rows] for k, v in reference.tensors().items() if v is not None and k != "targets"}]
        self.scored_windows = windows

    def steps(self, cancel: CancelToken | None = None, target_ci: float | None = None) -> Iterator[Estimate]:
        """Score the windows not scored yet, yielding an Estimate after each window.

        Stops early (between batches) when ``cancel`` is set, or when the ratio's 95% interval is
        within +-``target_ci`` (a fraction; needs a reference). The scorer keeps what it scored."""
        _check_options(None, None, target_ci)
        while self.scored_windows < self.total_windows and not self.reason:
            if cancel is not None and cancel.is_set():
                return
            scored = self._advance_round()
            if scored is None:
                return
            for done in range(scored[0] + 1, scored[1] + 1):
                estimate = self.estimate(done)
                yield estimate
                if target_ci is not None and not estimate.exact and estimate.ratio_half_width <= target_ci:
                    self._truncate(done)
                    return

    def _truncate(self, windows: int) -> None:
        """Forget the rows after the first ``windows`` windows (an early stop inside a batch)."""
        rows = windows * self.per_window
        for name, parts in self._rows.items():
            self._rows[name] = [torch.cat(parts)[:rows]] if parts else []
        own = LMReference.join(self.targets, self._parts).head(rows)
        self._parts = [{k: v for k, v in own.tensors().items() if v is not None and k != "targets"}]
        self.scored_windows = windows

    def values(self, name: str, windows: int) -> Tensor:
        """Per-token figure ``name`` (nll, correct, kl, agree, diff) of the first ``windows`` windows -> [T] float64."""
        parts = self._rows[name]
        return torch.cat(parts)[:windows * self.per_window] if parts else torch.empty(0, dtype=torch.float64)

    def estimate(self, windows: int | None = None) -> Estimate:
        """Figures over the first ``windows`` scored windows (default: all scored so far)."""
        windows = self.scored_windows if windows is None else windows
        spread = dict(window=self.per_window, total_windows=self.total_windows, method=self.interval)
        nll = mean_interval(self.values("nll", windows), **spread).map(math.exp)
        figures = dict(tokens=windows * self.per_window, windows=windows, total_windows=self.total_windows,
                       seconds=self.seconds, interval=self.interval, perplexity=nll.mean, perplexity_ci95=nll.pair())
        if self.reference is not None:
            ratio = mean_interval(self.values("diff", windows), **spread).map(math.exp)
            kl = mean_interval(self.values("kl", windows), **spread).clamp(0.0, math.inf)
            agree = mean_interval(self.values("agree", windows), **spread).clamp(0.0, 1.0)
            figures.update(perplexity_ratio=ratio.mean, ratio_ci95=ratio.pair(), kl_divergence=kl.mean,
                           kl_ci95=kl.pair(), top1_agreement=agree.mean, top1_agreement_ci95=agree.pair())
        return Estimate(**figures)

    def result(self) -> tuple[LMMetrics, LMReference]:
        """Metrics over the windows scored (an estimate with intervals unless all were) and this
        model's own rows. A diverged run keeps the rows before the bad batch, flagged."""
        if self.scored_windows == 0 and not self.reason:
            raise DataError("no window was scored yet (the run was cancelled before its first window)")
        rows = self.scored_windows * self.per_window
        metrics = self._metrics()
        reference = LMReference.join(self.targets, self._parts, diverged=metrics.diverged).head(rows)
        return metrics, reference

    def _metrics(self) -> LMMetrics:
        windows = self.scored_windows
        rows = windows * self.per_window
        mean_nll = self.values("nll", windows).sum().item() / rows if rows else math.inf
        reason = self.reason
        if not reason and not math.isfinite(mean_nll):
            reason = "the mean NLL is infinite: the model gives some text token zero probability"
        exact = windows == self.total_windows and not reason
        metrics = LMMetrics(perplexity=math.inf if reason or mean_nll > 709 else math.exp(mean_nll),
                            mean_nll=math.inf if reason else mean_nll, tokens=self.targets.numel() if reason else rows,
                            top1_accuracy=math.nan if reason else self.values("correct", windows).mean().item(),
                            seconds=self.seconds, latency_ms_per_window=1000 * self.seconds / max(1, windows),
                            windows=self.total_windows if exact or reason else windows, seq_len=self.windows.shape[1],
                            diverged=bool(reason), reason=reason, exact=exact, total_tokens=self.targets.numel(),
                            interval=self.interval)
        if self.reference is not None:
            kl_method = self.reference.kl_method
            if reason:
                return replace(metrics, kl_divergence=math.inf, top1_agreement=math.nan, kl_method=kl_method)
            estimate = self.estimate(windows)
            metrics = replace(metrics, kl_divergence=self.values("kl", windows).sum().item() / rows,
                              top1_agreement=self.values("agree", windows).sum().item() / rows,
                              kl_method=kl_method, perplexity_ratio=estimate.perplexity_ratio)
        if not exact and not reason:
            estimate = self.estimate(windows)
            metrics = replace(metrics, perplexity_ci95=estimate.perplexity_ci95, ratio_ci95=estimate.ratio_ci95,
                              kl_ci95=estimate.kl_ci95, top1_agreement_ci95=estimate.top1_agreement_ci95)
        return metrics


def evaluate_causal_lm(model: nn.Module, windows: Tensor, reference: LMReference | None = None,
                       kl_top_k: int | None = 64, batch_size: int | None = None,
                       compute: str | None = None) -> tuple[LMMetrics, LMReference]:
    """Perplexity and next-token accuracy of ``model`` on ``windows`` [n_windows, seq_len] (token ids):
    the last step of :class:`WindowScorer`. With ``reference`` (the original's LMReference on the same
    windows) also the mean KL per token, top-1 agreement and the perplexity ratio. Returns this
    model's own reference (see WindowScorer). The model is not changed."""
    scorer = WindowScorer(model, windows, reference, kl_top_k, batch_size, compute=compute)
    for _ in scorer.steps():
        pass
    return scorer.result()
