"""One setting end to end on a model larger than memory: the CLI's ``run --max-memory``.

The cap bounds the run's peak for the model: the planner (``planning.layer_by_layer``) reserves
out of it one streamed block read and compressed and one window's (or calibration batch's)
working memory, and both loads keep resident only the rest, its resident budget.

1. the original is loaded within that budget (``streamed``): the blocks that do not fit stay on disk;
2. its baseline is evaluated, disk blocks streamed through accelerate's hooks one at a time;
3. it is compressed block by block into a staging folder (``sequential``), which consumes it;
4. the compressed model is loaded back from that folder within the same budget and evaluated against
   the baseline the same way;
5. the folder becomes the ``--save`` folder (a memopt save: ``run --model DIR`` loads it back, in
   memory or layer by layer), or is deleted.

The figures equal the in-memory route's (same functions on the same inputs); what differs is the
memory: the peak is measured over the whole run (peak RSS above the start on CPU) and set beside
the planner's estimate of it.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from memopt_core.compression.memory import MemoryReport, PeakMemory, large_allocations_unmapped
from memopt_core.compression.sparsity import overall_sparsity
from memopt_core.config import ModelSpec, OffloadConfig, RunConfig
from memopt_core.errors import ModelLoadError
from memopt_core.evaluation.quality import evaluate
from memopt_core.loading.devices import resolve_device
from memopt_core.loading.saved import MANIFEST, check_save_target, manifest_record, write_config_and_tokenizer
from memopt_core.offload.sequential import SequentialResult, check_supported, compress_sequential
from memopt_core.offload.streamed import StreamedModel, load_streamed, source_folder
from memopt_core.planning import guard
from memopt_core.planning.layer_by_layer import LayerByLayerPeak, estimate_peak
from memopt_core.runs.result import RunResult, model_summary, run_notes
from memopt_core.runs.workbench import Workbench


@contextmanager
def staging_folder(save_dir: str | None, offload: OffloadConfig) -> Iterator[Path]:
    """A fresh folder for the compressed model: beside ``save_dir`` (renamed onto it by the caller),
    else in ``offload.offload_dir`` (default: the system's temporary folder). Removed on exit."""
    if save_dir is not None:
        parent = check_save_target(save_dir).parent
    else:
        parent = Path(offload.offload_dir).expanduser() if offload.offload_dir else Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".memopt-layer-by-layer-", dir=parent))
    except OSError as error:
        raise ModelLoadError(f"cannot write offloaded weights in {str(parent)!r}: {error.strerror or error}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def planned_peak(model_config, config: RunConfig, offload: OffloadConfig) -> LayerByLayerPeak:
    """The planner's peak and resident budget for ``config`` under ``offload.max_memory``, from the
    model's config (a folder, a config.json path or a config)."""
    calib_tokens = config.calib.samples * config.calib.seq_len if config.needs_calibration else 0
    size = guard.dtype_bytes(config.model.dtype)
    return estimate_peak(model_config, size, offload.max_memory, config.eval.seq_len, calib_tokens)


def _memory(original_bytes: int, compressed: StreamedModel, layers: SequentialResult) -> MemoryReport:
    numel = sum(m.shape[0] * m.shape[1] for m in layers.memory) or 1
    return MemoryReport(dense_bytes=original_bytes, stored_bytes=compressed.stored_bytes(),
                        bits_per_weight=8 * sum(m.stored_bytes for m in layers.memory) / numel,
                        dense_bits_per_weight=8 * sum(m.dense_bytes for m in layers.memory) / numel,
                        measured_bytes=None, measured_method="", simulated=layers.simulated, layers=layers.memory)


def _publish(folder: Path, save_dir: str, result: RunResult, original: StreamedModel,
             layers: SequentialResult) -> None:
    """Write the manifest with the run's figures and move the staging folder onto ``save_dir``."""
    record = manifest_record(layers.modules, original.loaded, layers.simulated, result)
    (folder / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    final = check_save_target(save_dir)
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)


def _compress(bench: Workbench, original: StreamedModel, config: RunConfig, folder: Path) -> SequentialResult:
    """Block by block into ``folder`` (consuming the original), plus config, tokenizer and a
    manifest without figures yet, so the folder loads as a memopt save."""
    calibration = bench.calibration(config) if config.needs_calibration else None
    layers = compress_sequential(original, config, folder, calibration)
    write_config_and_tokenizer(original.loaded.model.config, original.loaded, folder)
    record = manifest_record(layers.modules, original.loaded, layers.simulated)  # the figures come at publication
    (folder / MANIFEST).write_text(json.dumps(record, indent=2, default=str))
    return layers


def _run(config: RunConfig, offload: OffloadConfig, folder: Path, peaks: PeakMemory) -> tuple[
        RunResult, StreamedModel, SequentialResult]:
    """Steps 1-4 of the module docstring, each a phase of ``peaks``: (the result, the consumed
    original, what was written)."""
    device, timings = resolve_device(config.model.device), {}
    with peaks.phase("load and baseline"):
        start = time.perf_counter()
        model_folder, name, _, _ = source_folder(config.model)
        plan = planned_peak(model_folder, config, offload)  # before any weight: the load needs its budget
        guard.check_fits(plan.total_bytes, f"the layer-by-layer run of {name!r}",
                         available=lambda: guard.device_available_bytes(device), detail="planner's peak estimate")
        original = load_streamed(config.model, offload, plan.resident_budget_bytes)
        timings["load_s"] = time.perf_counter() - start
        bench = Workbench(original.loaded)
        baseline = bench.baseline(config.eval)
        timings["baseline_s"] = baseline.seconds
    with peaks.phase("compress"):
        start, original_bytes = time.perf_counter(), original.stored_bytes()
        layers = _compress(bench, original, config, folder)
        timings["compress_s"] = time.perf_counter() - start
        timings.update(layers.timings)
        gc.collect()  # the original's husk: its tensors are released already
    with peaks.phase("evaluate"):
        compressed = load_streamed(ModelSpec(str(folder), device=config.model.device, dtype=config.model.dtype),
                                   offload, plan.resident_budget_bytes, tokenizer=original.loaded.tokenizer)
        start = time.perf_counter()
        metrics, _ = evaluate(compressed.loaded.model, original.loaded, baseline.data, config.eval,
                              baseline.reference)
        timings["evaluate_s"] = time.perf_counter() - start
    memory = _memory(original_bytes, compressed, layers)
    protocol = baseline.data.protocol if layers.calibration is None else \
        {**baseline.data.protocol, "calibration": layers.calibration}
    result = RunResult(model=model_summary(original.loaded), config=config, baseline=baseline.reference.metrics,
                       compressed=metrics, memory=memory, sparsity=overall_sparsity(layers.layers),
                       layers=layers.layers, timings=timings, protocol=protocol,
                       notes=run_notes(original.loaded, config, memory))
    result.execution.update(route="layer-by-layer", max_memory=offload.max_memory,
                            resident_budget=plan.resident_budget_bytes, planned_peak=plan.to_dict(),
                            original=original.describe(), compressed=compressed.describe())
    return result, original, layers


def run_layer_by_layer(config: RunConfig, offload: OffloadConfig, save_dir: str | None = None) -> RunResult:
    """Run one setting with its peak for the model bounded by ``offload.max_memory`` (resident weights
    within the planner's budget, one streamed block and one window's working memory: see module doc).
    The peak memory is measured by phase (load and baseline, compress, evaluate) above the start."""
    check_supported(config)
    if save_dir is not None:
        check_save_target(save_dir)
    peaks = PeakMemory(resolve_device(config.model.device))
    with staging_folder(save_dir, offload) as folder, large_allocations_unmapped():
        result, original, layers = _run(config, offload, folder, peaks)
        if save_dir is not None:
            _publish(folder, save_dir, result, original, layers)
    result.memory.measured_bytes = peaks.bytes
    result.memory.measured_method = f"{peaks.method}, largest phase of the layer-by-layer run"
    result.execution.update(measured_peak=peaks.bytes, measured_phases=dict(peaks.phases))
    planned = result.execution["planned_peak"]["total_bytes"]
    phases = ", ".join(f"{name} {value / 2**20:.0f}" for name, value in peaks.phases.items())
    budget = result.execution["resident_budget"]
    result.notes.append(f"layer by layer under a {offload.max_memory / 2**20:.0f} MiB cap on the peak "
                        f"({budget / 2**20:.0f} MiB of it for resident weights, the rest for one streamed block "
                        "and the working memory): "
                        f"peak memory above the start (MiB) {phases}; planner's estimate {planned / 2**20:.0f}; "
                        "first-time imports and text loading count in the first phase")
    return result
