"""``sensitivity``: compress one layer (or block) at a time and rank them by the quality they lose.

With ``--plan-bpw B`` it also plans mixed precision (2 to 8 bits per unit, measured around the
model quantized uniformly at --bits; see mixed_context.py) under an average of B stored bits per
weight, then applies the plan and uniform --bits and reports predicted vs measured quality of both.
"""
from __future__ import annotations

import argparse
import sys

from memopt_core.cli.common import add_model_arguments, model_spec, print_json, quant_kwargs
from memopt_core.config import EvalConfig, PruneConfig, QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.mixed.around_uniform import plan_and_compare
from memopt_core.mixed.sensitivity import QualityProbe, measure_sensitivity
from memopt_core.runs.workbench import Workbench


def register(sub) -> None:
    parser = sub.add_parser("sensitivity", help="rank layers or blocks by the quality lost when only they are compressed")
    add_model_arguments(parser)
    parser.add_argument("--bits", default=None, help="RTN bits applied to one unit at a time (2-8)")
    parser.add_argument("--prune-ratio", type=float, default=0.0, help="magnitude pruning applied to one unit at a time")
    parser.add_argument("--group-size", type=int, default=None, help="quantize in groups of G input columns")
    parser.add_argument("--asymmetric", action="store_true", help="min/max grid with an integer zero point")
    parser.add_argument("--by", default="layer", choices=("layer", "block"), help="unit compressed at a time")
    parser.add_argument("--eval-text", default="wikipedia", help="'wikipedia', 'news' or a UTF-8 text file")
    parser.add_argument("--seq-len", type=int, default=512, help="window length in tokens (default 512)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="tokens scored per unit (default 1024)")
    parser.add_argument("--plan-bpw", type=float, default=None,
                        help="also plan mixed precision (2-8 bits per unit) under this average bits per weight")
    parser.add_argument("--top", type=int, default=20, help="rows shown in the table (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle_sensitivity)


def _configs(args: argparse.Namespace) -> tuple[PruneConfig | None, QuantConfig | None]:
    options = dict(granularity="group" if args.group_size else "per-channel", symmetric=not args.asymmetric)
    if args.group_size:
        options["group_size"] = args.group_size
    quant = QuantConfig.from_bits(args.bits, **options) if args.bits is not None else None
    if quant is not None and quant.is_cast:
        raise ConfigError("sensitivity quantizes with integer bits (2-8); fp16/bf16 casts are not ranked")
    prune = PruneConfig("magnitude", args.prune_ratio) if args.prune_ratio else None
    if args.plan_bpw is None and prune is None and quant is None:
        raise ConfigError("give --bits and/or --prune-ratio (or --plan-bpw to plan mixed precision)")
    return prune, quant


def _progress(done: int, total: int, unit: str) -> None:
    sys.stderr.write(f"\r{done}/{total} {unit[:60]:<60}")
    if done == total:
        sys.stderr.write("\n")


def _table(result, top: int) -> str:
    unit = "NLL increase" if result.metric == "nll" else "cosine drop"
    lines = [f"{result.setting}, one {result.by} at a time: {unit} (baseline {result.baseline:.4f}), "
             f"{len(result.rows)} units in {result.seconds:.1f}s"]
    for rank, row in enumerate(result.rows[:top], start=1):
        kl = f"  KL {row.kl:.4f}" if row.kl is not None else ""
        lines.append(f"{rank:>4}. {row.unit:<48} {row.delta:+.5f}{kl}  ({row.params:,} weights)")
    return "\n".join(lines)


def _plan(args: argparse.Namespace, bench, probe) -> dict:
    base = QuantConfig(**{k: v for k, v in quant_kwargs(_plan_args(args)).items() if k != "method"})
    return plan_and_compare(bench, base, args.plan_bpw, by=args.by, probe=probe).to_dict()


def _plan_args(args: argparse.Namespace) -> argparse.Namespace:
    """The flags ``quant_kwargs`` reads, from this command's smaller set."""
    return argparse.Namespace(per_tensor=False, group_size=args.group_size, asymmetric=args.asymmetric,
                              range_method="minmax", fake=False, zero_point="int")


def handle_sensitivity(args: argparse.Namespace) -> int:
    prune, quant = _configs(args)  # validate before loading
    evaluation = EvalConfig(text=args.eval_text, seq_len=args.seq_len, max_tokens=args.max_tokens,
                            gen_tokens=0, zero_shot=False)
    bench = Workbench.load(model_spec(args))
    probe = QualityProbe(bench.loaded, evaluation)
    output: dict = {"model": bench.loaded.label}
    if prune is not None or quant is not None:
        progress = None if args.json else _progress
        output["sensitivity"] = measure_sensitivity(bench, quant, prune, by=args.by, probe=probe, progress=progress)
    if args.plan_bpw is not None:
        output.update(_plan(args, bench, probe))
    if args.json:
        print_json({k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in output.items()})
        return 0
    if "sensitivity" in output:
        print(_table(output["sensitivity"], args.top))
    if "plan" in output:
        plan, outcome = output["plan"], output["outcome"]
        print(f"mixed precision at <= {plan['budget_bpw']:.3f} bits/weight: {plan['bits_per_weight']:.3f} bits/weight, "
              f"weights by bits {plan['weights_by_bits']}")
        for name, result in (("plan", outcome), (f"uniform {plan['base']['bits']}-bit", output["uniform"])):
            print(f"{name}: predicted {result['loss']} {result['predicted_loss']:+.4f}, measured "
                  f"{result['measured_loss']:+.4f}, {result['bits_per_weight']:.3f} bits/weight "
                  f"({result['stored_weight_bytes']:,} weight bytes)")
    return 0
