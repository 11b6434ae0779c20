"""One compressed setting recovered end to end, on a loaded original (a Workbench), and the same
answered from the results store when it is there (``stored_recovery``).

Training data first (a text too short fails before anything is computed), then a compressed copy
measured as an ordinary run (``before``), then the copy opened for training, distilled from the
original, put back into its storage and measured again with the same protocol. The memory report
after recovery is taken from the recovered copy's own tensors, so "same bytes" is a measurement.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch

from memopt_core.compression.compress import CompressedModel
from memopt_core.compression.memory import MemoryReport, memory_report
from memopt_core.config import RunConfig
from memopt_core.errors import UnsupportedModelError
from memopt_core.recovery.config import RecoveryConfig, check_recoverable
from memopt_core.recovery.data import training_data
from memopt_core.recovery.distill import Distillation, Update
from memopt_core.recovery.result import RecoveredRun
from memopt_core.recovery.stored import peek_recovered, store_recovered
from memopt_core.recovery.trainable import open_for_training_
from memopt_core.runs.store import ResultStore
from memopt_core.runs.workbench import RunResult, Workbench

RECOVERABLE_KINDS = ("causal-lm", "encoder")


def _memory_after(bench: Workbench, compressed: CompressedModel, before: MemoryReport) -> MemoryReport:
    original, copy = bench.loaded.model, compressed.model
    names = compressed.target_names
    return memory_report(original, copy, {n: original.get_submodule(n) for n in names},
                         {n: copy.get_submodule(n) for n in names}, before.measured_bytes,
                         f"{before.measured_method}, while the copy was built (before recovery)", before.simulated)


def _checks(before: RunResult, after: RunResult) -> dict[str, Any]:
    """Stored bytes and sparsity (counted from the weights) before and after recovery."""
    return {"stored_bytes_before": before.memory.stored_bytes, "stored_bytes_after": after.memory.stored_bytes,
            "same_bytes": before.memory.stored_bytes == after.memory.stored_bytes,
            "bits_per_weight_before": before.memory.bits_per_weight,
            "bits_per_weight_after": after.memory.bits_per_weight,
            "sparsity_before": before.sparsity, "sparsity_after": after.sparsity}


def recover(bench: Workbench, config: RunConfig, recovery: RecoveryConfig, cancel: threading.Event | None = None,
            on_phase: Callable[[str], None] | None = None, on_update: Callable[[Update], None] | None = None,
            clock: Callable[[], float] = time.perf_counter) -> RecoveredRun:
    """Compress ``config`` on ``bench``'s original (never changed), then recover the copy.

    ``cancel`` stops training between steps (the best checkpoint so far is kept and measured);
    ``on_phase`` hears each phase's name, ``on_update`` each training step; ``clock`` is what the
    recovery's seconds and time limit count (wall time; ``time.process_time`` on a shared machine)."""
    check_recoverable(config)
    loaded, phase = bench.loaded, on_phase or (lambda text: None)
    if loaded.kind not in RECOVERABLE_KINDS:
        raise UnsupportedModelError(f"recovery trains causal LMs and sentence encoders, not a {loaded.kind}")
    phase("Drawing the training data")
    baseline = bench.baseline(config.eval)
    data = training_data(loaded.kind, loaded.tokenizer, recovery, config.eval, [s for s, _ in baseline.data.sentences])
    phase("Compressing a copy")
    start = time.perf_counter()
    compressed, memory = bench.compress(config)
    timings = {"compress_s": time.perf_counter() - start, **compressed.timings}
    phase("Scoring the compressed copy before recovery")
    before = bench.measure(config, compressed, memory, dict(timings))
    view = open_for_training_(compressed.model, compressed.target_names, freeze_zeros=config.prune is not None,
                              train_norms=recovery.train_norms, only=recovery.only, original=loaded.model)
    trained = {"layers": len(view.layers), "norm_tensors": len(view.norms),
               "parameters": sum(p.numel() for p in view.named_parameters().values())}
    phase("Training")
    loop = Distillation(view, loaded.model, loaded.tokenizer, loaded.kind, data, recovery, clock)
    with torch.inference_mode(False), torch.enable_grad():
        for update in loop.run(cancel):
            if on_update is not None:
                on_update(update)
    loop.finish()
    view.export_()
    timings["recovery_s"] = loop.seconds
    phase("Scoring the recovered copy")
    after = bench.measure(config, compressed, _memory_after(bench, compressed, memory), timings)
    after.notes.append(f"recovered by distillation from the original: {loop.steps_done} steps, best checkpoint at "
                       f"step {loop.best_step}" + (f"; {loop.message}" if loop.message else ""))
    info = {"config": recovery.to_dict(), "label": recovery.label, "data": data.description, **loop.summary(),
            "trained": trained, "checks": _checks(before, after)}
    return RecoveredRun(result=after, before=before.compressed, recovery=info, before_result=before,
                        compressed=compressed)


def stored_recovery(config: RunConfig, recovery: RecoveryConfig, store: ResultStore | None,
                    workbench: Callable[[], Any], cancel: threading.Event | None = None,
                    on_phase: Callable[[str], None] | None = None,
                    on_update: Callable[[Update], None] | None = None) -> tuple[dict[str, Any], bool]:
    """``(result dict, from the store)``: the stored full recovery when there is one, else recover
    on ``workbench()`` (called only then) and store what came out, stopped or not."""
    check_recoverable(config)
    found = peek_recovered(config, recovery, store) if store is not None else None
    if found is not None:
        return found, True
    run = recover(workbench(), config, recovery, cancel=cancel, on_phase=on_phase, on_update=on_update)
    result = run.to_dict()
    if store is not None:
        store_recovered(result, run.before_result.to_dict(), config, recovery, store)
    return result, False
