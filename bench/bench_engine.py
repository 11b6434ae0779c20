"""Engine speed and memory on the bundled SmolLM2, printed as ratios measured in one run.

    python bench/bench_engine.py [--max-tokens 4096]

Targets (issue 2): int4 g64 min-max compression < 0.25x one perplexity evaluation, clip search
< 2x; packed int4 evaluation <= 1.5x dense; stored bytes within 1% of the format's arithmetic;
RSS growth for holding the compressed copy <= 1.3x its stored bytes.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig  # noqa: E402
from memopt_core.evaluation.progressive import evaluate_causal_lm  # noqa: E402
from memopt_core.compression.memory import stored_bytes  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def format_bytes(bench, quant: QuantConfig, names) -> int:
    """What the packed format should take: codes, fp16 scales (+ zero points), the rest dense."""
    model = bench.loaded.model
    total = stored_bytes(model)
    for name in names:
        weight = model.get_submodule(name).weight
        out, width = weight.shape
        groups = math.ceil(width / quant.group_size) if quant.granularity == "group" else 1
        per_group = 2 if quant.symmetric else 4
        total += math.ceil(out * width * quant.bits / 8) + out * groups * per_group - weight.numel() * 4
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    spec = ModelSpec("smollm2-135m")
    bench, load_s = timed(lambda: Workbench.load(spec))
    windows = bench.baseline(EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)).data.windows
    (_, _), dense_eval_s = timed(lambda: evaluate_causal_lm(bench.loaded.model, windows))
    print(f"SmolLM2-135M fp32, {windows.numel()} tokens in {windows.shape[0]} windows; load {load_s:.1f}s")
    print(f"dense perplexity evaluation: {dense_eval_s:.2f}s")

    minmax = QuantConfig(bits=4, granularity="group", group_size=64)
    clip = QuantConfig(bits=4, granularity="group", group_size=64, range_method="clip-search")
    for label, quant in (("min-max", minmax), ("clip-search", clip)):
        (compressed, memory), seconds = timed(lambda: bench.compress(RunConfig(spec, quant=quant)))
        print(f"compress int4 g64 {label}: {seconds:.2f}s = {seconds / dense_eval_s:.3f}x one evaluation "
              f"(target < {0.25 if label == 'min-max' else 2.0}x)")
        if quant is minmax:
            (metrics, _), packed_eval_s = timed(lambda: evaluate_causal_lm(compressed.model, windows))
            expected = format_bytes(bench, quant, compressed.target_names)
            added = sum(layer.stored_bytes for layer in memory.layers)
            print(f"packed int4 evaluation: {packed_eval_s:.2f}s = {packed_eval_s / dense_eval_s:.3f}x dense "
                  f"(target <= 1.5x); perplexity {metrics.perplexity:.3f}")
            print(f"stored bytes {memory.stored_bytes:,} vs format arithmetic {expected:,}: "
                  f"{memory.stored_bytes / expected:.4f}x (target within 1%)")
            print(f"measured RSS growth {memory.measured_bytes:,} bytes = {memory.measured_bytes / memory.stored_bytes:.3f}x "
                  f"the copy's stored bytes (target <= 1.3x); {memory.measured_bytes / added:.3f}x the "
                  f"{added:,} bytes the copy adds (untargeted tensors are shared with the original)")


if __name__ == "__main__":
    main()
