"""Sweep overhead and store speed on the bundled SmolLM2, printed as ratios measured in one run.

    python bench/bench_sweep.py [--max-tokens 2048]

Targets (issue 3): a 12-setting sweep costs at most 1.15x the sum of its settings'
compress+evaluate times (one load, one baseline, no reloads); a rerun of the finished sweep
(answered from the store, no model load) takes under 5% of the first run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memopt_core.config import EvalConfig, ModelSpec  # noqa: E402
from memopt_core.runs.store import ResultStore  # noqa: E402
from memopt_core.runs.sweep import SweepGrid, run_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=2048)
    args = parser.parse_args()
    spec = ModelSpec("smollm2-135m")
    grid = SweepGrid(prune_methods=("magnitude",), prune_ratios=(0.0, 0.25, 0.5), bits=(16, 8, 4, 3))
    evaluation = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    # The libraries the first load imports (transformers, the model classes) are paid once per
    # process, by any use of memopt; timed apart so both ratios can be shown.
    start = time.perf_counter()
    import transformers.models.llama.modeling_llama  # noqa: F401 (timed: the import is the point)
    import_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder) / "bench.db")
        start = time.perf_counter()
        first = run_sweep(spec, grid, evaluation, store=store)
        first_s = time.perf_counter() - start
        table = first.table
        work_s = float((table["compress_s"] + table["evaluate_s"]).sum())
        start = time.perf_counter()
        again = run_sweep(spec, grid, evaluation, store=store)
        rerun_s = time.perf_counter() - start
    print(f"{len(table)} settings on SmolLM2-135M, {args.max_tokens} evaluation tokens")
    print(f"first sweep {first_s:.1f}s; sum of settings' compress+evaluate {work_s:.1f}s; "
          f"overhead (load, tokenize, baseline once) {first_s - work_s:.1f}s")
    print(f"sweep / sum of settings: {first_s / work_s:.3f}x (target <= 1.15x); counting the first import of "
          f"transformers ({import_s:.1f}s) too: {(first_s + import_s) / work_s:.3f}x")
    print(f"rerun from the store: {rerun_s:.3f}s = {rerun_s / first_s:.4f}x the first run (target < 0.05x); "
          f"{again.from_store} of {len(again.table)} settings from the store")


if __name__ == "__main__":
    main()
