"""Number formats on the bundled SmolLM2 and MiniLM, and rotation before quantizing. Prints figures
and ratios measured in this one run; asserts nothing.

    python bench/bench_formats.py [--models smollm2-135m,minilm-l6] [--max-tokens 4096] [--quick]
                                  [--calib-samples 64] [--json-out FILE]

Quality: SmolLM2 perplexity on the bundled Wikipedia leads (first --max-tokens tokens, 512-token
windows, fp32); MiniLM mean cosine similarity of its sentence embeddings to the original's on the
200 labelled sentences. Stored bits per weight of the targeted layers count every scale, minimum
and sign byte (packed storage). GPTQ calibrates on --calib-samples x 512 tokens of both bundled texts.

1. every format at its natural bits: int4 g32/g64 RTN, NF4, NF4 + double quant, MXFP4, NVFP4,
   Q4_K-style (and Q3_K, Q6_K, FP8 E4M3/E5M2, int8);
2. 3- and 4-bit RTN and GPTQ with and without the randomized Hadamard rotation, with the measured
   reason: rows' absmax/RMS before/after and the share of the output error passing through the 8
   input channels with the largest activations (memopt_core.compression.rotation_report).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memopt_core.compression.rotation_report import by_module, rotation_reports, summary  # noqa: E402
from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, QuantConfig, RunConfig  # noqa: E402
from memopt_core.runs.format_presets import NATURAL_FORMATS  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402

G64 = dict(granularity="group", group_size=64)
ROTATION_GRID = [("RTN W4 per-channel", QuantConfig(bits=4)), ("RTN W4 g64", QuantConfig(bits=4, **G64)),
                 ("RTN W3 g64", QuantConfig(bits=3, **G64)), ("RTN W3 per-channel", QuantConfig(bits=3)),
                 ("GPTQ W4 per-channel", QuantConfig(method="gptq", bits=4)),
                 ("GPTQ W3 g64", QuantConfig(method="gptq", bits=3, **G64))]
# --quick: 3 and 4 bits, RTN and GPTQ, each with and without rotation
QUICK_ROTATION = ("RTN W4 per-channel", "RTN W3 g64", "GPTQ W4 per-channel", "GPTQ W3 g64")
QUICK_FORMATS = ("W4A16 g32 sym", "W4A16 g64 sym", "NF4 b64", "NF4 b64 dq", "MXFP4 b32", "NVFP4 b16", "Q4_K",
                 "FP8-E4M3 per-channel")


def quality(result) -> tuple[str, float]:
    metrics = result.compressed
    return ("perplexity", metrics["perplexity"]) if "perplexity" in metrics else ("cosine", metrics["cosine_similarity"])


def run_one(bench: Workbench, spec: ModelSpec, evaluation: EvalConfig, quant: QuantConfig,
            calib: CalibConfig = CalibConfig()) -> dict:
    start = time.perf_counter()
    result = bench.run(RunConfig(spec, quant=quant, eval=evaluation, calib=calib))
    name, value = quality(result)
    fallbacks = sorted({row["layout"] for row in result.layers if row.get("layout") not in (None, quant.format)})
    return {"setting": quant.label, name: value, "bpw": result.memory.bits_per_weight,
            "stored_bytes": result.memory.stored_bytes, "seconds": time.perf_counter() - start,
            "fallbacks": fallbacks}


def format_table(bench, spec, evaluation, labels: set[str], first: bool) -> list[dict]:
    """The formats whose label is (``first``) or is not in ``labels``, in NATURAL_FORMATS order."""
    rows = []
    for quant in NATURAL_FORMATS:
        if (quant.label in labels) != first:
            continue
        row = run_one(bench, spec, evaluation, quant)
        rows.append(row)
        print(f"  {row['setting']:<24} {_quality_text(row):>18}  {row['bpw']:.4f} bpw  {row['seconds']:6.1f} s"
              + (f"  (fell back to {', '.join(row['fallbacks'])} where rows are not a multiple of 256)"
                 if row["fallbacks"] else ""), flush=True)
    return rows


def _quality_text(row: dict) -> str:
    return f"ppl {row['perplexity']:.3f}" if "perplexity" in row else f"cosine {row['cosine']:.4f}"


def _value(row: dict) -> float:
    return row.get("perplexity", row.get("cosine"))


def rotation_table(bench, spec, evaluation, calib: CalibConfig, quick: bool) -> list[dict]:
    rows = []
    grid = [(name, quant) for name, quant in ROTATION_GRID if not quick or name in QUICK_ROTATION]
    for name, quant in grid:
        plain = run_one(bench, spec, evaluation, quant, calib)
        rotated = run_one(bench, spec, evaluation, dataclasses.replace(quant, rotate="hadamard"), calib)
        ratio = _value(rotated) / _value(plain)
        rows.append({"setting": name, "plain": _value(plain), "rotated": _value(rotated), "ratio": ratio,
                     "bpw_plain": plain["bpw"], "bpw_rotated": rotated["bpw"]})
        metric = "ppl" if "perplexity" in plain else "cosine"
        print(f"  {name:<22} {metric} {_value(plain):10.4f} -> {_value(rotated):10.4f} with rotation "
              f"(x{ratio:.3f}; {plain['bpw']:.4f} -> {rotated['bpw']:.4f} bpw)", flush=True)
    return rows


def diagnostics(bench, spec, quick: bool) -> dict:
    tokens = bench.calibration(RunConfig(spec, calib=CalibConfig(samples=4, seq_len=256))).tokens
    out = {}
    grids = (("W4 per-channel", QuantConfig(bits=4)), ("W3 g64", QuantConfig(bits=3, **G64)))
    for label, quant in grids[:1] if quick else grids:
        reports = rotation_reports(bench.loaded.model, tokens, quant)
        stats, modules = summary(reports), by_module(reports)
        out[label] = {"all": stats, "by_module": modules}
        print(f"  {label}: rows' absmax/RMS {stats['absmax_to_rms_plain']:.3f} -> {stats['absmax_to_rms_rotated']:.3f}; "
              f"top-8 input channels hold {stats['activation_share_top']:.1%} of the input energy and carry "
              f"{stats['error_share_top_plain']:.1%} -> {stats['error_share_top_rotated']:.1%} of the output error; "
              f"relative output error, first token {stats['first_token_error_plain']:.4g} -> "
              f"{stats['first_token_error_rotated']:.4g}, other tokens {stats['other_tokens_error_plain']:.4g} -> "
              f"{stats['other_tokens_error_rotated']:.4g}; rotation lowers it in {stats['layers_helped']:.0%} of the "
              f"layers; inputs at 4 bits per token (simulated W4A4) {stats['activation_error_plain']:.4g} -> "
              f"{stats['activation_error_rotated']:.4g}", flush=True)
        for module, part in modules.items():
            print(f"    {module:<18} first token {part['first_token_error_plain']:.4g} -> "
                  f"{part['first_token_error_rotated']:.4g}, other tokens {part['other_tokens_error_plain']:.4g} -> "
                  f"{part['other_tokens_error_rotated']:.4g}, absmax/RMS {part['absmax_to_rms_plain']:.2f} -> "
                  f"{part['absmax_to_rms_rotated']:.2f}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2-135m,minilm-l6")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="the formats of the issue, 4 rotation pairs and one diagnosed grid only")
    parser.add_argument("--calib-samples", type=int, default=64, help="GPTQ calibration sequences of 512 tokens")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    calib = CalibConfig(samples=args.calib_samples)
    evaluation = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    report = {}
    for model in args.models.split(","):
        spec = ModelSpec(model)
        bench = Workbench.load(spec)
        baseline = bench.baseline(evaluation).reference.metrics
        print(f"\n{model}: original {baseline.get('perplexity', 'cosine 1.0')}", flush=True)
        report[model] = {"baseline": baseline}
        print("formats at their natural bits (those of the issue first):")
        report[model]["formats"] = format_table(bench, spec, evaluation, set(QUICK_FORMATS), first=True)
        _save(report, args.json_out)  # after each part: a stopped run keeps what it measured
        print("rotation (randomized Hadamard on the input dimension):")
        report[model]["rotation"] = rotation_table(bench, spec, evaluation, calib, args.quick)
        _save(report, args.json_out)
        print("why (rotation_report on 4 x 256 calibration tokens):")
        report[model]["diagnostics"] = diagnostics(bench, spec, args.quick)
        _save(report, args.json_out)
        if not args.quick:
            print("more formats:")
            report[model]["formats"] += format_table(bench, spec, evaluation, set(QUICK_FORMATS), first=False)
            _save(report, args.json_out)
        del bench
    return 0


def _save(report: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
