"""Memory figures of a model, kept apart as DESIGN.md asks:

- dense bytes: the original's tensors as loaded;
- stored bytes: the bytes of the tensors the compressed model really holds (packed codes,
  fp16 scales, zero points, masks, plus everything left uncompressed);
- measured bytes: process RSS growth on CPU (psutil), ``max_memory_allocated`` on CUDA,
  while the compressed copy is built.

Fake-quantized or merely masked weights are held as dense floats: their stored bytes show no
saving, which is the truth. GiB are binary (2**30 bytes).
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import psutil
import torch
from torch import nn

from memopt_core.compression.layers import module_storage_bytes, weight_storage_bytes
from memopt_core.units import GIB


def stored_bytes(module: nn.Module) -> int:
    """Bytes of every tensor the module holds, shared memory (tied weights) counted once."""
    return module_storage_bytes(module)


@dataclass
class LayerMemory:
    name: str
    shape: tuple[int, int]
    dense_bytes: int
    stored_bytes: int
    bits_per_weight: float


@dataclass
class MemoryReport:
    dense_bytes: int
    stored_bytes: int
    bits_per_weight: float
    dense_bits_per_weight: float
    measured_bytes: int | None
    measured_method: str
    simulated: bool
    layers: list[LayerMemory] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """How many times smaller the stored model is than the dense one."""
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["dense_gib"] = self.dense_bytes / GIB
        data["stored_gib"] = self.stored_bytes / GIB
        return data


def layer_memory(original: dict[str, nn.Module], compressed: dict[str, nn.Module]) -> list[LayerMemory]:
    """Per targeted layer: weight bytes before (dense, unless the original was itself compressed),
    weight storage bytes after, and bits per weight after."""
    rows = []
    for name, before in original.items():
        shape = (before.out_features, before.in_features)
        after_bytes = weight_storage_bytes(compressed[name])
        rows.append(LayerMemory(name=name, shape=shape, dense_bytes=weight_storage_bytes(before),
                                stored_bytes=after_bytes, bits_per_weight=8 * after_bytes / (shape[0] * shape[1])))
    return rows


def memory_report(original: nn.Module, compressed: nn.Module, original_targets: dict[str, nn.Module],
                  compressed_targets: dict[str, nn.Module], measured: int | None, measured_method: str,
                  simulated: bool) -> MemoryReport:
    layers = layer_memory(original_targets, compressed_targets)
    numel = sum(l.shape[0] * l.shape[1] for l in layers)
    return MemoryReport(
        dense_bytes=stored_bytes(original), stored_bytes=stored_bytes(compressed),
        bits_per_weight=8 * sum(l.stored_bytes for l in layers) / numel,
        dense_bits_per_weight=8 * sum(l.dense_bytes for l in layers) / numel,
        measured_bytes=measured, measured_method=measured_method, simulated=simulated, layers=layers)


def release_freed_heap() -> None:
    """Return freed heap pages to the OS so RSS reflects what is held, not what was once used."""
    gc.collect()
    if os.name == "posix":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: RSS may then over-report
            pass


# mallopt parameters (glibc's malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def _mallopt(parameter: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(parameter, value))
    except (OSError, AttributeError):  # not glibc
        return False


@contextmanager
def large_allocations_unmapped(threshold: int = 1 << 20) -> Iterator[bool]:
    """Within the block, glibc serves every allocation of at least ``threshold`` bytes (tensors of
    a layer or more) with a mapping of its own, returned to the OS as soon as it is freed, and
    trims the heap's free top above ``threshold``; yields whether that is in force (glibc only).

    Why: glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB) and only
    trims a free heap top above twice that, so after the first large tensor is freed, every
    layer-sized temporary is carved from the heap and its pages stay resident once freed: measured
    on SmolLM2 layer by layer, 45-90 MiB per block compressed and 200 MiB over one evaluation
    window, all of it free memory. On exit both thresholds return to glibc's default 128 KiB, fixed
    (glibc's adjustment stays off for the process, as after any mallopt call)."""
    active = _mallopt(_M_MMAP_THRESHOLD, threshold) and _mallopt(_M_TRIM_THRESHOLD, threshold)
    try:
        yield active
    finally:
        if active:
            _mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            _mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)


@dataclass
class Measurement:
    bytes: int | None = None
    method: str = ""


@contextmanager
def measure_growth(device: torch.device) -> Iterator[Measurement]:
    """Measure the memory that the block leaves held: RSS growth on CPU, peak allocated on CUDA."""
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        result.method = "CUDA max_memory_allocated growth"
        return
    process = psutil.Process()
    release_freed_heap()
    start = process.memory_info().rss
    yield result
    release_freed_heap()
    result.bytes = max(0, process.memory_info().rss - start)
    result.method = "process RSS growth (psutil)"


_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)
SAMPLE_EVERY_S = 0.005


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where Linux cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as handle:
        return int(_HWM.search(handle.read()).group(1)) * 1024


@contextmanager
def _sampled_peak(process: psutil.Process) -> Iterator[list[int]]:
    """Where VmHWM cannot be reset: sample RSS every few milliseconds on a thread (may miss a spike)."""
    peak, stop = [process.memory_info().rss], threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            peak[0] = max(peak[0], process.memory_info().rss)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)


class PeakMemory:
    """Peak memory above the level at construction, phase by phase. On CPU the kernel's peak RSS
    (VmHWM, reset as each phase starts, once the heap has returned what earlier phases freed; RSS
    sampled every few ms where Linux cannot reset it); on CUDA ``max_memory_allocated`` (reset as
    each phase starts). Other threads count too: the figure is the process's, as the operating
    system sees it. ``phases``: bytes above the start by phase name; ``bytes``: the largest."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.phases = device, {}
        self.process = psutil.Process()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.start, self.method = torch.cuda.memory_allocated(device), "CUDA max_memory_allocated above the start"
            return
        release_freed_heap()
        self.start = self.process.memory_info().rss
        self.resets = _reset_peak_rss()
        self.method = "peak RSS above the start (VmHWM)" if self.resets else "peak RSS above the start (sampled)"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            release_freed_heap()  # what earlier phases freed must not count in this one
            if self.resets and _reset_peak_rss():
                yield
                peak = _peak_rss()
            else:
                with _sampled_peak(self.process) as sampled:
                    yield
                peak = sampled[0]
        self.phases[name] = max(0, peak - self.start)

    @property
    def bytes(self) -> int:
        return max(self.phases.values(), default=0)


@contextmanager
def measure_peak(device: torch.device) -> Iterator[Measurement]:
    """The PEAK memory the block reaches above the level at its start (see :class:`PeakMemory`)."""
    result, peaks = Measurement(), PeakMemory(device)
    with peaks.phase("all"):
        yield result
    result.bytes, result.method = peaks.bytes, peaks.method
