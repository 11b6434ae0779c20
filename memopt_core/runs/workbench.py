"""One compression run end to end: load, baseline (once), compress a copy, evaluate, measure.

A :class:`Workbench` holds one loaded original and the original's side of each evaluation
config (scored once, kept on disk), so sweeps and dashboard sessions reuse them; :func:`run` is
the one-shot entry point used by the CLI. ``run_steps`` is the same run, step by step.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from memopt_core.planning import guard
from memopt_core.compression.calibration_data import CalibrationSet, calibration_set
from memopt_core.compression.compress import CompressedModel, compress_copy, layer_figures
from memopt_core.config import CalibConfig, EvalConfig, RunConfig, SolverConfig
from memopt_core.evaluation.lm_records import Estimate
from memopt_core.evaluation.progressive import CancelToken
from memopt_core.evaluation.quality import EvalData, Reference, evaluate
from memopt_core.evaluation.reference_store import ReferenceStore
from memopt_core.loading.devices import resolve_device
from memopt_core.compression.memory import MemoryReport, measure_growth, memory_report
from memopt_core.loading.models import LoadedModel, load_model
from memopt_core.compression.sparsity import overall_sparsity
from memopt_core.runs.baselines import OriginalEvaluation
from memopt_core.runs.progressive_run import Compressed, run_protocol, run_steps
from memopt_core.runs.format_notes import format_notes, layer_layout
from memopt_core.runs.result import RunResult, model_summary, run_notes


@dataclass
class Baseline:
    """The original's complete figures and reference for one evaluation config."""

    data: EvalData
    reference: Reference
    seconds: float  # spent scoring the original in this process (0 when it came from disk)


class Workbench:
    """A loaded original plus cached baselines; compress copies of it at any setting.

    The original is only read: every run works on a structural copy (see compress.py), so one
    workbench can serve several sessions; the baseline cache is guarded by a lock."""

    def __init__(self, loaded: LoadedModel, references: ReferenceStore | None = None):
        self.loaded = loaded
        self.references = references if references is not None else ReferenceStore()
        self._originals: dict[EvalConfig, OriginalEvaluation] = {}
        self._baselines: dict[EvalConfig, Baseline] = {}
        self._calibration: dict[tuple[CalibConfig, str, int], CalibrationSet] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec) -> "Workbench":
        return cls(load_model(spec))

    def original(self, config: EvalConfig) -> OriginalEvaluation:
        """The original's side of ``config``: windows prepared now, figures scored when first needed."""
        with self._lock:
            if config not in self._originals:
                self._originals[config] = OriginalEvaluation(self.loaded, config, self.references)
            return self._originals[config]

    def baseline(self, config: EvalConfig) -> Baseline:
        """The original's complete figures for this evaluation config, computed once (or loaded)."""
        original = self.original(config)
        reference = original.reference()
        with self._lock:
            if config not in self._baselines:
                self._baselines[config] = Baseline(original.data, reference, original.seconds)
            return self._baselines[config]

    def calibration(self, config: RunConfig) -> CalibrationSet:
        """Calibration tokens for ``config`` (drawn once per calibration and evaluation setting)."""
        # The solver settings do not change the tokens: a GPTQ run with and without act-order share them.
        key = (dataclasses.replace(config.calib, solver=SolverConfig()), config.eval.text, config.eval.max_tokens)
        with self._lock:
            if key not in self._calibration:
                self._calibration[key] = calibration_set(self.loaded.tokenizer, config.calib, config.eval)
            return self._calibration[key]

    def compress(self, config: RunConfig) -> tuple[CompressedModel, MemoryReport]:
        """A compressed copy and its memory report (stored bytes and measured growth)."""
        device = resolve_device(self.loaded.spec.device)
        # Drawn before measuring, so the cached tokens do not count as the copy's memory.
        calibration = self.calibration(config) if config.needs_calibration else None
        # The copy is at most as large as the original while it is built: refuse before the OS kills us.
        what = f"a compressed copy of {self.loaded.name!r}"
        guard.check_fits(guard.model_bytes(self.loaded.model), what,
                         available=lambda: guard.device_available_bytes(device))
        with measure_growth(device) as measured, guard.out_of_memory_as_resource_error(what, device):
            compressed = compress_copy(self.loaded.model, config, calibration=calibration)
        original, copy = self.loaded.model, compressed.model
        report = memory_report(original, copy, {n: original.get_submodule(n) for n in compressed.target_names},
                               {n: copy.get_submodule(n) for n in compressed.target_names},
                               measured.bytes, measured.method, compressed.simulated)
        return compressed, report

    def layer_rows(self, compressed: CompressedModel, memory: MemoryReport) -> list[dict[str, Any]]:
        """Sparsity, SQNR, bits, bytes and layout of each targeted layer, in order."""
        rows = layer_figures(self.loaded.model, compressed.model, compressed.target_names)
        by_name = {layer.name: layer for layer in memory.layers}
        for row in rows:
            layer = by_name[row["name"]]
            row.update(bits=layer.bits_per_weight, stored_bytes=layer.stored_bytes, dense_bytes=layer.dense_bytes,
                       layout=layer_layout(compressed.model.get_submodule(row["name"])))
        return rows

    def measure(self, config: RunConfig, compressed: CompressedModel, memory: MemoryReport,
                timings: dict[str, float]) -> RunResult:
        """Evaluate a compressed copy of this original in one go against its baseline and assemble
        the result (``timings`` gains ``evaluate_s``; the copy is not changed). Used where a copy is
        changed after compression (recovery); a plain setting runs through :meth:`run_steps`."""
        original, baseline = self.original(config.eval), self.baseline(config.eval)
        start = time.perf_counter()
        metrics, _ = evaluate(compressed.model, self.loaded, baseline.data, config.eval, baseline.reference)
        timings["evaluate_s"] = time.perf_counter() - start
        rows = self.layer_rows(compressed, memory)
        return RunResult(model=model_summary(self.loaded), config=config, baseline=baseline.reference.metrics,
                         compressed=metrics, memory=memory, sparsity=overall_sparsity(rows), layers=rows,
                         timings=timings, protocol=run_protocol(original, compressed.calibration),
                         notes=run_notes(self.loaded, config, memory) + format_notes(config.quant, rows))

    def run_steps(self, config: RunConfig, cancel: CancelToken | None = None, target_ci: float | None = None,
                  save_dir: str | None = None) -> Iterator[Compressed | Estimate | RunResult]:
        """The run of ``config`` step by step (see ``progressive_run.run_steps``)."""
        return run_steps(self, config, cancel, target_ci, save_dir)

    def run(self, config: RunConfig, save_dir: str | None = None, target_ci: float | None = None,
            on_step: Callable[[Compressed | Estimate], None] | None = None) -> RunResult:
        """Run ``config`` to its result (exact, unless ``target_ci`` stops it early); ``on_step``
        sees every step before it (the CLI's ``--stream`` prints the estimates)."""
        result = None
        for step in self.run_steps(config, target_ci=target_ci, save_dir=save_dir):
            if isinstance(step, RunResult):
                result = step
            elif on_step is not None:
                on_step(step)
        return result


def run(config: RunConfig, save_dir: str | None = None, target_ci: float | None = None,
        on_step: Callable[[Compressed | Estimate], None] | None = None) -> RunResult:
    """Load ``config.model`` and run one setting (the CLI's ``run``)."""
    start = time.perf_counter()
    bench = Workbench.load(config.model)
    load_s = time.perf_counter() - start
    result = bench.run(config, save_dir=save_dir, target_ci=target_ci, on_step=on_step)
    result.timings["load_s"] = load_s
    return result
