"""One setting, step by step: the compressed copy's figures that need no evaluation first, then an
estimate after each scored window, then the exact result (``Workbench.run`` is this, consumed).

``run_steps`` yields, in order:

1. :class:`Compressed` once the copy is built: memory, per-layer sparsity, bytes and SQNR, notes;
2. an :class:`memopt_core.evaluation.lm_records.Estimate` after each window (causal LMs);
3. the :class:`RunResult`, exact, or labelled "estimate from N tokens" when ``target_ci`` stopped
   it early. A set ``cancel`` token ends the steps between windows (or generated tokens) without a result.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from memopt_core.compression.dequantize_once import dequantized_once
from memopt_core.compression.sparsity import overall_sparsity
from memopt_core.config import RunConfig
from memopt_core.evaluation.causal_lm import greedy_generate, sentiment_accuracy, zero_shot_scores
from memopt_core.evaluation.compute import compute_in, model_device
from memopt_core.evaluation.intervals import INTERVAL_MEANING
from memopt_core.evaluation.lm_records import Estimate
from memopt_core.evaluation.progressive import CancelToken, WindowScorer
from memopt_core.evaluation.quality import evaluate
from memopt_core.loading.saved import save_compressed
from memopt_core.planning import guard
from memopt_core.runs.baselines import OriginalEvaluation
from memopt_core.runs.format_notes import format_notes
from memopt_core.runs.result import RunResult, model_summary, run_notes


@dataclass(frozen=True)
class Compressed:
    """The copy is built: ``partial`` holds the RunResult.to_dict() keys known before evaluation
    (model, config, memory, sparsity, layers, timings, protocol, notes)."""

    partial: dict[str, Any]


def step_message(step: "Compressed | Estimate | RunResult") -> tuple[str, dict[str, Any]]:
    """``step`` as plain data for another thread or process: ``(kind, dict)`` with kind
    ``"compressed"`` (the partial result), ``"estimate"`` or ``"result"``."""
    if isinstance(step, Compressed):
        return "compressed", step.partial
    if isinstance(step, Estimate):
        return "estimate", step.to_dict()
    return "result", step.to_dict()


def estimate_label(tokens: int) -> str:
    return f"estimate from {tokens:,} tokens"


def _is_set(cancel: CancelToken | None) -> bool:
    return cancel is not None and cancel.is_set()


def _copy_lm_metrics(bench, config: RunConfig, original: OriginalEvaluation, model, cancel: CancelToken | None,
                     target_ci: float | None, timings: dict[str, float]) -> Iterator[Estimate | dict]:
    """Score the copy window by window (yielding estimates), then zero-shot and generation; the
    last item yielded is the copy's metrics dict (absent when cancelled)."""
    evaluation = config.eval
    scorer = WindowScorer(model, original.data.windows, original.lm, evaluation.kl_top_k,
                          compute=evaluation.compute_dtype)
    yield from scorer.steps(cancel, target_ci)
    if scorer.scored_windows == 0 or _is_set(cancel):
        return
    metrics, _ = scorer.result()
    timings["evaluate_s"] = scorer.seconds
    out = asdict(metrics)
    if not metrics.exact and not metrics.diverged:
        out["label"] = estimate_label(metrics.tokens)
    began = time.perf_counter()
    with compute_in(model, evaluation.compute_dtype):
        if evaluation.zero_shot:
            scores = zero_shot_scores(model, bench.loaded.tokenizer, original.data.sentences)
            out["zero_shot"] = asdict(sentiment_accuracy(scores, original.data.sentences))
        if evaluation.gen_tokens and not _is_set(cancel):
            # One forward per token: rebuild each weight once, not once per token.
            with dequantized_once(model, guard.device_available_bytes(model_device(model))):
                out["generation"] = {"prompt": evaluation.prompt, "text": greedy_generate(
                    model, bench.loaded.tokenizer, evaluation.prompt, evaluation.gen_tokens, cancel)}
    timings["zero_shot_and_generation_s"] = time.perf_counter() - began
    if not _is_set(cancel):  # a cancelled run ends without a result, even after its last window
        yield out


def _record_kernels(model, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Which kernel each targeted layer computed with (set by its forward) -> rows and a count in metrics."""
    used: dict[str, int] = {}
    for row in rows:
        kernel = getattr(model.get_submodule(row["name"]), "kernel", None)
        if kernel is not None:
            row["kernel"] = kernel
            used[kernel] = used.get(kernel, 0) + 1
    if used:
        metrics["kernels"] = used


def run_protocol(original: OriginalEvaluation, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation protocol, how intervals are computed, and the calibration data of calibrated methods."""
    protocol = dict(original.data.protocol)
    if original.lm is not None:
        protocol["intervals"] = INTERVAL_MEANING[original.lm.scorer.interval]
    return protocol if calibration is None else {**protocol, "calibration": calibration}


def run_steps(bench, config: RunConfig, cancel: CancelToken | None = None, target_ci: float | None = None,
              save_dir: str | None = None) -> Iterator[Compressed | Estimate | RunResult]:
    """Run ``config`` on ``bench`` (a loaded Workbench), yielding as the module docstring says."""
    began = time.perf_counter()
    original = bench.original(config.eval)
    spent_on_original = original.seconds
    timings: dict[str, float] = {}
    compressed, memory = bench.compress(config)
    timings["compress_s"] = time.perf_counter() - began
    timings.update(compressed.timings)
    rows = bench.layer_rows(compressed, memory)
    partial = {"model": model_summary(bench.loaded), "config": config.to_dict(), "memory": memory.to_dict(),
               "sparsity": overall_sparsity(rows), "layers": [dict(row) for row in rows], "timings": dict(timings),
               "protocol": run_protocol(original, compressed.calibration), "notes": run_notes(bench.loaded, config, memory) + format_notes(config.quant, rows)}
    timings["layers_s"] = time.perf_counter() - began - timings["compress_s"]
    yield Compressed(partial)
    if _is_set(cancel):
        return
    if original.lm is None:
        metrics, _ = evaluate(compressed.model, bench.loaded, original.data, config.eval, original.other())
        timings["evaluate_s"] = time.perf_counter() - began - timings["compress_s"] - timings["layers_s"]
    else:
        metrics = None
        for item in _copy_lm_metrics(bench, config, original, compressed.model, cancel, target_ci, timings):
            if isinstance(item, Estimate):
                timings.setdefault("first_estimate_s", time.perf_counter() - began)
                yield item
            else:
                metrics = item
        if metrics is None:  # cancelled
            return
    _record_kernels(compressed.model, rows, metrics)
    baseline = original.metrics(complete=metrics.get("exact", True))
    timings["baseline_s"] = original.seconds - spent_on_original
    timings["total_s"] = time.perf_counter() - began
    result = RunResult(model=partial["model"], config=config, baseline=baseline, compressed=metrics, memory=memory,
                       sparsity=partial["sparsity"], layers=rows, timings=timings, protocol=partial["protocol"],
                       notes=partial["notes"])
    if save_dir is not None:
        save_compressed(compressed, bench.loaded, result, save_dir)
    yield result
