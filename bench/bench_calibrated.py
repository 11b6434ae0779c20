"""Calibrated methods on the bundled SmolLM2: GPTQ, Wanda, SparseGPT and a mixed-precision plan,
against round-to-nearest and magnitude pruning. Prints figures and ratios; asserts nothing.

    python bench/bench_calibrated.py [--quick] [--max-tokens 4096] [--json-out FILE]

Perplexity on three English texts: the bundled Wikipedia leads and news (first --max-tokens
tokens, 512-token windows) and gensim's Lee test corpus (``lee.cor``: 50 other news articles,
none of them in the calibration text). Calibration: 64 x 512 tokens ("both": half Wikipedia,
half news) from beyond the evaluated prefixes, seed 0.

Targets (issue 5): GPTQ 4-bit per-channel closes >= 20% of the RTN-to-dense gap; 3-bit g64 GPTQ
<= 0.65x RTN's perplexity; Wanda and SparseGPT far below magnitude at 50% and 2:4; mixed
precision at uniform RTN 4-bit's stored bytes below uniform RTN; calibration < 180 s per method.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memopt_core.config import (CalibConfig, EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig,  # noqa: E402
                                SolverConfig)
from memopt_core.texts import load_text, token_windows  # noqa: E402
from memopt_core.evaluation.causal_lm import evaluate_causal_lm  # noqa: E402
from memopt_core.compression.calibration_data import calibration_set  # noqa: E402
from memopt_core.mixed.around_uniform import measure_around_uniform, plan_around_uniform  # noqa: E402
from memopt_core.mixed.plan import (CANDIDATE_BITS, apply_plan, plan_outcome, uniform_plan_of,  # noqa: E402
                                         weight_bytes, widths_to_measure)
from memopt_core.runs.workbench import Workbench  # noqa: E402
from memopt_core.mixed.sensitivity import QualityProbe  # noqa: E402
from memopt_core.compression.walk import target_linears  # noqa: E402

SPEC = ModelSpec("smollm2-135m")
ACT, NO_ACT = SolverConfig(act_order=True), SolverConfig(act_order=False)


def lee_text() -> str:
    """gensim's Lee test corpus (latin-1 on disk)."""
    folder = Path(importlib.util.find_spec("gensim").submodule_search_locations[0], "test", "test_data")
    return (folder / "lee.cor").read_text(encoding="latin-1")


def eval_windows(tokenizer, max_tokens: int) -> dict:
    texts = {"wikipedia": load_text("wikipedia").text, "news": load_text("news").text, "lee": lee_text()}
    return {name: token_windows(tokenizer, text, 512, max_tokens) for name, text in texts.items()}


def perplexities(model, windows: dict) -> dict:
    return {name: evaluate_causal_lm(model, w, kl_top_k=1)[0].perplexity for name, w in windows.items()}


def settings(quick: bool, mixed_only: bool = False) -> list[tuple[str, PruneConfig | None, QuantConfig | None,
                                                                  SolverConfig | None]]:
    g64 = dict(granularity="group", group_size=64)
    rows = [("RTN W4 per-channel", None, QuantConfig(bits=4), None),
            ("GPTQ W4 per-channel act-order", None, QuantConfig(method="gptq", bits=4), ACT),
            ("GPTQ W4 per-channel no act-order", None, QuantConfig(method="gptq", bits=4), NO_ACT),
            ("RTN W3 g64", None, QuantConfig(bits=3, **g64), None),
            ("GPTQ W3 g64 act-order", None, QuantConfig(method="gptq", bits=3, **g64), ACT),
            ("GPTQ W3 g64 no act-order", None, QuantConfig(method="gptq", bits=3, **g64), NO_ACT),
            ("RTN W4 g64", None, QuantConfig(bits=4, **g64), None),
            ("GPTQ W4 g64 act-order", None, QuantConfig(method="gptq", bits=4, **g64), ACT),
            ("magnitude 50%", PruneConfig("magnitude", 0.5), None, None),
            ("wanda 50%", PruneConfig("wanda", 0.5), None, None),
            ("sparsegpt 50%", PruneConfig("sparsegpt", 0.5), None, None),
            ("magnitude 2:4", PruneConfig("magnitude", pattern="2:4"), None, None),
            ("wanda 2:4", PruneConfig("wanda", pattern="2:4"), None, None),
            ("sparsegpt 2:4", PruneConfig("sparsegpt", pattern="2:4"), None, None),
            ("sparsegpt 50% + GPTQ W4 (joint)", PruneConfig("sparsegpt", 0.5), QuantConfig(method="gptq", bits=4), ACT)]
    if mixed_only:
        return rows[:1]  # the uniform RTN W4 the plan is compared with
    if quick:
        keep = {"RTN W4 per-channel", "GPTQ W4 per-channel act-order", "RTN W3 g64", "GPTQ W3 g64 act-order",
                "magnitude 50%", "wanda 50%", "sparsegpt 50%"}
        rows = [row for row in rows if row[0] in keep]
    return rows


def show(label: str, ppl: dict, extra: str = "") -> None:
    figures = "  ".join(f"{name} {value:9.2f}" for name, value in ppl.items())
    print(f"{label:<34} {figures}  {extra}", flush=True)


def run_settings(bench: Workbench, windows: dict, calib: CalibConfig, quick: bool, eval_config: EvalConfig,
                 mixed_only: bool = False) -> dict:
    results = {}
    for label, prune, quant, options in settings(quick, mixed_only):
        solved = dataclasses.replace(calib, solver=options or SolverConfig())
        config = RunConfig(SPEC, prune=prune, quant=quant, eval=eval_config, calib=solved)
        start = time.perf_counter()
        compressed, memory = bench.compress(config)
        seconds = time.perf_counter() - start
        ppl = perplexities(compressed.model, windows)
        calibrate_s = compressed.timings.get("calibrate_s")
        results[label] = {"perplexity": ppl, "bits_per_weight": memory.bits_per_weight,
                          "stored_bytes": memory.stored_bytes, "compress_s": seconds, "calibrate_s": calibrate_s,
                          "timings": compressed.timings}
        timing = f"calibration {calibrate_s:6.1f}s" if calibrate_s is not None else f"compress {seconds:5.1f}s"
        show(label, ppl, f"{memory.bits_per_weight:5.2f} bpw  {timing}")
        del compressed
    return results


def mixed_precision(bench: Workbench, windows: dict, by: str, samples: int, eval_config: EvalConfig) -> dict:
    """Mixed-precision RTN per-channel plans at uniform RTN 4-bit's stored weight bytes, from ONE
    sensitivity measurement around the uniform 4-bit model, for two candidate sets; each plan and
    uniform 4-bit are evaluated like every other setting. The probe windows (``samples`` x 512
    tokens) come from both bundled texts beyond the evaluated tokens, another seed than calibration."""
    base = QuantConfig(bits=4)
    shapes = [m.weight.shape for m in target_linears(bench.loaded.model).values()]
    budget = 8 * sum(weight_bytes(tuple(s), base) for s in shapes) / sum(s[0] * s[1] for s in shapes)
    draw = calibration_set(bench.loaded.tokenizer, CalibConfig(samples=samples, seq_len=512, seed=1), eval_config)
    probe = QualityProbe(bench.loaded, windows=draw.tokens)
    measured = widths_to_measure(CANDIDATE_BITS, base.bits, budget)
    context = measure_around_uniform(bench, base, measured, by=by, probe=probe)
    print(f"  sensitivity of {len(context.units)} {by}s at {list(measured)} bits around uniform 4-bit, on "
          f"{draw.tokens.numel()} probe tokens: {context.seconds:.0f}s; budget {budget:.4f} bpw (uniform RTN W4)")
    out = {"budget_bpw": budget, "sensitivity_s": context.seconds, "plans": {}}
    for candidates in ((3, 4, 8), tuple(b for b in CANDIDATE_BITS if b >= min(context.changes))):
        plan = plan_around_uniform(context, bench, budget, candidates)
        label = f"mixed {'/'.join(map(str, candidates))} by {by}"
        out["plans"][label] = evaluate_plan(bench, plan, probe, windows, label)
    uniform = uniform_plan_of(context.units, context.shapes, base, context.uniform_loss, {"loss": context.loss})
    out["uniform"] = evaluate_plan(bench, uniform, probe, windows, "uniform RTN W4 (same accounting)")
    return out


def evaluate_plan(bench: Workbench, plan, probe: QualityProbe, windows: dict, label: str) -> dict:
    compressed = apply_plan(bench.loaded.model, plan)
    outcome = plan_outcome(probe, compressed, plan)
    ppl = perplexities(compressed.model, windows)
    show(label, ppl, f"{plan.bits_per_weight:5.3f} bpw")
    print(f"    weights by bits {plan.histogram()}; probe KL predicted {outcome['predicted_loss']:.4f}, measured "
          f"{outcome['measured_loss']:.4f}; stored weight bytes {outcome['stored_weight_bytes']:,}")
    return {"perplexity": ppl, "plan": plan.to_dict(), "outcome": outcome}


def gap_closed(rtn: float, method: float, dense: float) -> float:
    return (rtn - method) / (rtn - dense)


def summary(dense: dict, results: dict) -> None:
    def ppl(label):
        return results[label]["perplexity"] if label in results else None

    print("\nratios (per text)")
    rtn4 = ppl("RTN W4 per-channel")
    for label in ("GPTQ W4 per-channel act-order", "GPTQ W4 per-channel no act-order"):
        if ppl(label):
            closed = {t: f"{gap_closed(rtn4[t], ppl(label)[t], dense[t]):.0%}" for t in dense}
            print(f"  {label}: share of the RTN-to-dense gap closed {closed} (target >= 20%)")
    rtn3 = ppl("RTN W3 g64")
    for label in ("GPTQ W3 g64 act-order", "GPTQ W3 g64 no act-order"):
        if ppl(label):
            print(f"  {label} / RTN: {({t: round(ppl(label)[t] / rtn3[t], 3) for t in dense})} (target <= 0.65)")
    if ppl("RTN W4 g64") and ppl("GPTQ W4 g64 act-order"):
        print(f"  GPTQ W4 g64 / RTN W4 g64: "
              f"{({t: round(ppl('GPTQ W4 g64 act-order')[t] / ppl('RTN W4 g64')[t], 3) for t in dense})}")
    for pattern in ("50%", "2:4"):
        magnitude = ppl(f"magnitude {pattern}")
        for method in ("wanda", "sparsegpt"):
            if magnitude and ppl(f"{method} {pattern}"):
                ratio = {t: round(ppl(f"{method} {pattern}")[t] / magnitude[t], 3) for t in dense}
                print(f"  {method} {pattern} / magnitude: {ratio}")
    if "mixed" in results:
        for label, plan in results["mixed"]["plans"].items():
            ratio = {t: round(plan["perplexity"][t] / results["mixed"]["uniform"]["perplexity"][t], 3) for t in dense}
            print(f"  {label} / uniform RTN W4 at the same stored bytes: {ratio}")
    calib = {k: round(v["calibrate_s"], 1) for k, v in results.items() if v.get("calibrate_s") is not None}
    print(f"  calibration seconds (target < 180): {calib}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings, 16 x 512 calibration, 1,024 tokens")
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluated tokens per text (default 4096)")
    parser.add_argument("--mp-by", default="layer", choices=("layer", "block"), help="mixed-precision unit")
    parser.add_argument("--mp-samples", type=int, default=2, help="512-token probe windows per sensitivity probe")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (on a machine shared with other jobs, 1 avoids threads spinning "
                             "for a busy core; default: torch's)")
    parser.add_argument("--mixed-only", action="store_true", help="only uniform RTN W4 and the mixed-precision plan")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-precision plan")
    parser.add_argument("--json-out", default=None, help="write every figure to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_tokens = args.max_tokens or (1024 if args.quick else 4096)
    calib = CalibConfig(samples=16 if args.quick else 64, seq_len=512)
    eval_config = EvalConfig(max_tokens=max_tokens, gen_tokens=0, zero_shot=False)
    start = time.perf_counter()
    bench = Workbench.load(SPEC)
    windows = eval_windows(bench.loaded.tokenizer, max_tokens)
    print(f"SmolLM2-135M fp32 (load {time.perf_counter() - start:.1f}s); perplexity over the first {max_tokens} "
          f"tokens, 512-token windows; calibration {calib.samples} x {calib.seq_len} tokens '{calib.text}', seed 0; "
          f"{torch.get_num_threads()} torch threads")
    dense = perplexities(bench.loaded.model, windows)
    show("dense", dense)
    results = run_settings(bench, windows, calib, args.quick, eval_config, args.mixed_only)
    if not args.no_mixed:
        results["mixed"] = mixed_precision(bench, windows, args.mp_by, args.mp_samples, eval_config)
    summary(dense, results)
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"dense": dense, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
