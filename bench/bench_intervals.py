"""How honest are the early 95% intervals? Coverage of the exact figure on SmolLM2, one run.

    python bench/bench_intervals.py [--max-tokens 16384] [--seq-len 512] [--settings 24]

Scores 24 settings (RTN widths and groupings, magnitude pruning, a few combinations) on the first
16,384 tokens of the bundled Wikipedia text (32 windows of 512) with the same loop the dashboard
uses, keeps every per-token figure, then asks for each interval method (token, block, window,
bootstrap; ``evaluation/intervals.py``) and metric (perplexity, ratio to the original, KL): how
often does the band after the 1st, 2nd, 4th and 8th window contain the exact figure over all 32?
Settings share their text, so the 24 cases are not independent; the same question is also asked
with the estimate starting at each of the 32 windows (768 cases) as a second view. The per-token
figures are saved (``--save``) so the table can be printed again without scoring.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig  # noqa: E402
from memopt_core.evaluation.intervals import INTERVAL_METHODS, mean_interval  # noqa: E402
from memopt_core.evaluation.progressive import WindowScorer  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402

STEPS = (1, 2, 4, 8)
METRICS = ("perplexity", "ratio", "kl")


def settings() -> list[tuple[PruneConfig | None, QuantConfig | None]]:
    """24 settings from harmless to harsh, cheap to build (no calibration)."""
    quant = [QuantConfig(bits=b) for b in (8, 6, 5, 4, 3)]
    quant += [QuantConfig(bits=b, granularity="group", group_size=g) for b in (4, 3) for g in (128, 64, 32)]
    quant += [QuantConfig(bits=4, symmetric=False), QuantConfig(bits=4, granularity="group", group_size=32,
                                                                symmetric=False),
              QuantConfig(bits=3, granularity="group", group_size=32, symmetric=False),
              QuantConfig(bits=2, granularity="group", group_size=32, symmetric=False)]
    out: list[tuple[PruneConfig | None, QuantConfig | None]] = [(None, q) for q in quant]
    out += [(PruneConfig(ratio=r), None) for r in (0.1, 0.2, 0.3, 0.4, 0.5)]
    out += [(PruneConfig(ratio=0.25), QuantConfig(bits=4, granularity="group", group_size=64)),
            (PruneConfig(ratio=0.1), QuantConfig(bits=8))]
    out += [(PruneConfig(pattern="2:4"), None)]
    return out


def score_settings(bench: Workbench, evaluation: EvalConfig, count: int) -> dict[str, list[torch.Tensor]]:
    """Per-token diff (own NLL - original's), own NLL and KL of each setting -> name: [n_settings x [N]]."""
    original = bench.original(evaluation)
    original.lm.finish()
    figures: dict = {"ratio": [], "perplexity": [], "kl": [], "labels": [], "window": evaluation.seq_len - 1}
    every = settings()
    for prune, quant in (every[round(i * len(every) / count)] for i in range(count)):  # spread if fewer
        config = RunConfig(bench.loaded.spec, prune=prune, quant=quant, eval=evaluation)
        began = time.perf_counter()
        compressed, _ = bench.compress(config)
        scorer = WindowScorer(compressed.model, original.data.windows, original.lm, evaluation.kl_top_k)
        for _ in scorer.steps():
            pass
        figures["ratio"].append(scorer.values("diff", scorer.total_windows))
        figures["perplexity"].append(scorer.values("nll", scorer.total_windows))
        figures["kl"].append(scorer.values("kl", scorer.total_windows))
        figures["labels"].append(config.label)
        print(f"  {config.label:38} ratio {math.exp(figures['ratio'][-1].mean()):.4f}  "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    return figures


def _covers(values: torch.Tensor, window: int, windows: int, k: int, method: str, metric: str) -> tuple[bool, float]:
    """(does the band after the first k windows hold the exact mean, its relative half-width)."""
    band = mean_interval(values[:k * window], window, windows, method)
    exact = values.mean().item()
    if metric in ("perplexity", "ratio"):  # exp of a mean NLL: the band maps, the verdict does not change
        band, exact = band.map(math.exp), math.exp(exact)
    inside = band.low <= exact <= band.high
    return inside, band.half_width / abs(band.mean) if band.mean else math.inf


def coverage(figures: dict, window: int, windows: int, rotate: bool) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(metric, method, k) -> (share of cases covered, median relative half-width)."""
    table = {}
    for metric in METRICS:
        for method in INTERVAL_METHODS:
            for k in STEPS:
                hits, widths = [], []
                for values in figures[metric]:
                    starts = range(windows) if rotate else (0,)
                    for start in starts:
                        rolled = values.view(windows, window).roll(-start, 0).reshape(-1)
                        inside, width = _covers(rolled, window, windows, k, method, metric)
                        hits.append(inside)
                        widths.append(width)
                widths.sort()
                table[(metric, method, k)] = (sum(hits) / len(hits), widths[len(widths) // 2])
    return table


def print_table(table: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"{'metric':12}{'method':11}" + "".join(f"{f'after {k}':>22}" for k in STEPS))
    for metric in METRICS:
        for method in INTERVAL_METHODS:
            cells = [table[(metric, method, k)] for k in STEPS]
            print(f"{metric:12}{method:11}" + "".join(f"{share:>10.0%} (+-{width:>7.2%})" for share, width in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=512, help="window length (512: the dashboard's default)")
    parser.add_argument("--settings", type=int, default=24)
    parser.add_argument("--save", type=Path, default=Path("/tmp/memopt-interval-figures.pt"))
    parser.add_argument("--load", action="store_true", help="print the tables from --save without scoring")
    args = parser.parse_args()
    evaluation = EvalConfig(max_tokens=args.max_tokens, seq_len=args.seq_len, gen_tokens=0, zero_shot=False)
    if args.load:
        figures = torch.load(args.save)
    else:
        bench = Workbench.load(ModelSpec("smollm2-135m"))
        print(f"scoring {args.settings} settings on {args.max_tokens:,} tokens (windows of {args.seq_len}):", flush=True)
        figures = score_settings(bench, evaluation, args.settings)
        torch.save(figures, args.save)
    print_coverage(figures)


def print_coverage(figures: dict) -> None:
    """Both coverage tables of saved per-token figures (``figures["window"]``: scored tokens per window)."""
    n, window = len(figures["ratio"]), figures["window"]
    windows = figures["ratio"][0].numel() // window
    print_table(coverage(figures, window, windows, rotate=False),
                f"coverage of the exact figure over {n} settings, estimates from the first windows "
                "(median relative half-width in brackets):")
    print_table(coverage(figures, window, windows, rotate=True),
                f"the same with the estimate starting at each of the {windows} windows ({n * windows} cases):")


if __name__ == "__main__":
    main()
