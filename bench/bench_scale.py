"""Past one machine, on the bundled SmolLM2-135M; ratios measured in one run.

    python bench/bench_scale.py [--max-tokens 2048] [--part both|layers|ray]

1. Layer by layer: one setting (RTN W4 g32) in memory, then with ``max_memory`` at half the
   model's size: time ratio, the same figures, the resident budget the cap leaves (the cap less
   one block read and compressed and one window's working memory) and the peak memory above the
   start of each run against the cap plus one block and the planner's estimate (about the cap).
2. Ray: 8 settings (W8/W4/W3/W2 x magnitude 0%/50%) in this process, then on a local Ray cluster
   with 2 workers x 1 thread: speed-up, and overhead = Ray's wall time minus the settings' own
   compute time shared by the workers.

Benchmarks measure the machine they run on: on a shared machine, run it when it is quiet.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from memopt_core.compression.memory import measure_peak  # noqa: E402
from memopt_core.config import ClusterConfig, EvalConfig, ModelSpec, OffloadConfig, QuantConfig, RunConfig  # noqa: E402
from memopt_core.offload.layer_by_layer import run_layer_by_layer  # noqa: E402
from memopt_core.runs.ray_executor import RayExecutor, connect  # noqa: E402
from memopt_core.runs.store import ResultStore  # noqa: E402
from memopt_core.runs.sweep import SweepGrid, run_sweep  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402

MiB = 2**20
SPEC = ModelSpec("smollm2-135m")


def layer_by_layer(evaluation: EvalConfig) -> None:
    config = RunConfig(SPEC, quant=QuantConfig(bits=4, granularity="group", group_size=32), eval=evaluation)
    cpu = torch.device("cpu")
    with measure_peak(cpu) as whole_peak:
        start = time.perf_counter()
        bench = Workbench.load(SPEC)
        whole = bench.run(config)
        whole_s = time.perf_counter() - start
    size = whole.memory.dense_bytes
    del bench
    gc.collect()
    cap = OffloadConfig(max_memory=size // 2)
    start = time.perf_counter()
    layered = run_layer_by_layer(config, cap)
    layered_s = time.perf_counter() - start
    plan = layered.execution["planned_peak"]
    block = plan["block_bytes"]
    original = layered.execution["original"]
    streamed = original["streamed_modules"]
    print(f"SmolLM2-135M {size / MiB:.0f} MiB float32, {config.quant.label}, {evaluation.max_tokens} tokens")
    print(f"in memory: {whole_s:.1f}s, peak {whole_peak.bytes / MiB:.0f} MiB above the start; "
          f"perplexity {whole.compressed['perplexity']:.4f}")
    modules = streamed + original["resident_modules"]
    print(f"layer by layer, cap {cap.max_memory / MiB:.0f} MiB: resident budget "
          f"{plan['resident_budget_bytes'] / MiB:.1f} MiB (cap - 2 x block {block / MiB:.1f} - working memory "
          f"{plan['working_bytes'] / MiB:.1f}), {original['resident_bytes'] / MiB:.1f} MiB resident, "
          f"{streamed} of {modules} modules streamed from disk")
    print(f"layer by layer run: {layered_s:.1f}s = {layered_s / whole_s:.2f}x the in-memory time; perplexity "
          f"{layered.compressed['perplexity']:.4f} (relative difference "
          f"{layered.compressed['perplexity'] / whole.compressed['perplexity'] - 1:+.1e}: the head in slices "
          "rounds alike)")
    phases, measured = layered.execution["measured_phases"], layered.memory.measured_bytes
    target = cap.max_memory + block
    print("peak above the start, by phase (MiB): "
          + ", ".join(f"{k} {v / MiB:.0f} ({v / target:.2f}x)" for k, v in phases.items())
          + f" of the cap + one block = {target / MiB:.0f} MiB; in memory {whole_peak.bytes / MiB:.0f}")
    print(f"whole run {measured / MiB:.0f} MiB = {measured / cap.max_memory:.2f}x the cap, "
          f"{measured / plan['total_bytes']:.2f}x the planner's estimate {plan['total_bytes'] / MiB:.0f} MiB "
          "(resident budget + block read and compressed + one window's working memory); every phase under the "
          f"cap + one block: {max(phases.values()) < target}")


def on_ray(evaluation: EvalConfig) -> None:
    grid = SweepGrid(prune_ratios=(0.0, 0.5), bits=(8, 4, 3, 2))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        local = run_sweep(SPEC, grid, evaluation, store=ResultStore(Path(folder) / "local.db"))
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        connect(ClusterConfig())
        connect_s = time.perf_counter() - start
        executor = RayExecutor(ClusterConfig(workers=2, cpus_per_worker=1))
        start = time.perf_counter()
        remote = run_sweep(SPEC, grid, evaluation, store=ResultStore(Path(folder) / "ray.db"), executor=executor)
        ray_s = time.perf_counter() - start
    work_s = float((remote.table["compress_s"] + remote.table["evaluate_s"]).sum())
    same = ((remote.table["perplexity"] - local.table["perplexity"]).abs() / local.table["perplexity"]).max()
    print(f"{len(local.table)} settings, {evaluation.max_tokens} tokens: this process ({torch.get_num_threads()} "
          f"threads) {local_s:.1f}s; Ray 2 workers x 1 thread {ray_s:.1f}s (+{connect_s:.1f}s to start the cluster)")
    print(f"speed-up {local_s / ray_s:.2f}x ({local_s / (ray_s + connect_s):.2f}x counting the start); overhead "
          f"{ray_s - work_s / 2:.1f}s = wall time - settings' compute {work_s:.1f}s / 2 workers (model load, "
          f"baseline and imports per worker); largest relative perplexity gap to local {same:.1e} (1 thread against 2 sums in another order)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--part", choices=("both", "layers", "ray"), default="both")
    args = parser.parse_args()
    evaluation = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    if args.part in ("both", "layers"):
        layer_by_layer(evaluation)
    if args.part in ("both", "ray"):
        on_ray(evaluation)
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
