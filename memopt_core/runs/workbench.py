"""One compression run end to end: load, baseline (once), compress a copy, evaluate, measure.

A :class:`Workbench` holds one loaded original and the baselines computed on it, so sweeps and
dashboard sessions reuse them; :func:`run` is the one-shot entry point used by the CLI.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from memopt_core.compression.calibration_data import CalibrationSet, calibration_set
from memopt_core.compression.compress import CompressedModel, compress_copy, layer_errors
from memopt_core.compression.memory import MemoryReport, measure_growth, memory_report
from memopt_core.compression.sparsity import layer_sparsity, overall_sparsity
from memopt_core.config import CalibConfig, EvalConfig, RunConfig, SolverConfig
from memopt_core.evaluation.quality import EvalData, Reference, evaluate, prepare
from memopt_core.loading.devices import resolve_device
from memopt_core.loading.models import LoadedModel, load_model
from memopt_core.loading.saved import save_compressed
from memopt_core.planning import guard


@dataclass
class RunResult:
    """Everything one run measured; ``to_dict`` is the CLI's ``--json`` object."""

    model: dict[str, Any]
    config: RunConfig
    baseline: dict[str, Any]
    compressed: dict[str, Any]
    memory: MemoryReport
    sparsity: float
    layers: list[dict[str, Any]]
    timings: dict[str, float]
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Where the tensors lived (in memory, or layer by layer under a cap: memopt_core.offload) and the
    # compute threads of the process that ran it; never a figure.
    execution: dict[str, Any] = field(default_factory=lambda: {"route": "in-memory",
                                                               "threads": torch.get_num_threads()})

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config.to_dict(), "baseline": self.baseline,
                "compressed": self.compressed, "memory": self.memory.to_dict(), "sparsity": self.sparsity,
                "layers": self.layers, "timings": self.timings, "protocol": self.protocol, "notes": self.notes,
                "execution": self.execution}


@dataclass
class Baseline:
    data: EvalData
    reference: Reference
    seconds: float


def model_summary(loaded: LoadedModel) -> dict[str, Any]:
    return {"name": loaded.name, "label": loaded.label, "source": loaded.source, "kind": loaded.kind,
            "architecture": loaded.architecture, "params": loaded.num_params, "is_random": loaded.is_random,
            "device": loaded.spec.device, "dtype": loaded.spec.dtype}


def run_notes(loaded: LoadedModel, config: RunConfig, memory: MemoryReport) -> list[str]:
    notes = []
    if loaded.is_random:
        notes.append(f"{loaded.name} has random weights: its quality figures show mechanics, not a real model")
    if memory.simulated:
        notes.append("fake quantization: weights are held as dequantized floats, so the memory saving is simulated")
    if config.prune is not None and config.quant is None and memory.bits_per_weight >= memory.dense_bits_per_weight:
        notes.append("pruned weights are held dense (zeros stored): pruning alone saves no memory at this sparsity")
    quant = config.quant
    if quant is not None and not quant.is_cast and quant.zero_point == "float" and not quant.symmetric:
        notes.append("float-minimum grid (GGUF Q4_1): zero is not on the grid, so pruned zeros need a stored mask")
    return notes


class Workbench:
    """A loaded original plus cached baselines; compress copies of it at any setting.

    The original is only read: every run works on a structural copy (see compress.py), so one
    workbench can serve several sessions; the baseline cache is guarded by a lock."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._baselines: dict[EvalConfig, Baseline] = {}
        self._calibration: dict[tuple[CalibConfig, str, int], CalibrationSet] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec) -> "Workbench":
        return cls(load_model(spec))

    def baseline(self, config: EvalConfig) -> Baseline:
        """The original's figures for this evaluation config, computed once."""
        with self._lock:
            if config not in self._baselines:
                start = time.perf_counter()
                data = prepare(self.loaded, config)
                _, reference = evaluate(self.loaded.model, self.loaded, data, config)
                self._baselines[config] = Baseline(data, reference, time.perf_counter() - start)
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
        rows = layer_sparsity(compressed.model, compressed.target_names)
        errors = layer_errors(self.loaded.model, compressed.model, compressed.target_names)
        by_name = {layer.name: layer for layer in memory.layers}
        for row in rows:
            layer = by_name[row["name"]]
            row.update(bits=layer.bits_per_weight, stored_bytes=layer.stored_bytes, dense_bytes=layer.dense_bytes,
                       sqnr_db=errors[row["name"]])
        return rows

    def measure(self, config: RunConfig, compressed: CompressedModel, memory: MemoryReport,
                timings: dict[str, float]) -> RunResult:
        """Evaluate a compressed copy of this original against its baseline and assemble the result
        (``timings`` gains ``evaluate_s``; the copy is not changed)."""
        baseline = self.baseline(config.eval)
        start = time.perf_counter()
        metrics, _ = evaluate(compressed.model, self.loaded, baseline.data, config.eval, baseline.reference)
        timings["evaluate_s"] = time.perf_counter() - start
        rows = self.layer_rows(compressed, memory)
        return RunResult(model=model_summary(self.loaded), config=config, baseline=baseline.reference.metrics,
                         compressed=metrics, memory=memory, sparsity=overall_sparsity(rows), layers=rows,
                         timings=timings, protocol=_protocol(baseline.data.protocol, compressed),
                         notes=run_notes(self.loaded, config, memory))

    def run(self, config: RunConfig, save_dir: str | None = None) -> RunResult:
        timings: dict[str, float] = {}
        baseline = self.baseline(config.eval)
        timings["baseline_s"] = baseline.seconds
        start = time.perf_counter()
        compressed, memory = self.compress(config)
        timings["compress_s"] = time.perf_counter() - start
        timings.update(compressed.timings)
        result = self.measure(config, compressed, memory, timings)
        if save_dir is not None:
            save_compressed(compressed, self.loaded, result, save_dir)
        return result


def _protocol(protocol: dict[str, Any], compressed: CompressedModel) -> dict[str, Any]:
    """The evaluation protocol, plus the calibration data and solver of calibrated methods."""
    if compressed.calibration is None:
        return protocol
    return {**protocol, "calibration": compressed.calibration}


def run(config: RunConfig, save_dir: str | None = None) -> RunResult:
    """Load ``config.model`` and run one setting (the CLI's ``run``)."""
    start = time.perf_counter()
    bench = Workbench.load(config.model)
    load_s = time.perf_counter() - start
    result = bench.run(config, save_dir=save_dir)
    result.timings["load_s"] = load_s
    return result
