"""``python -m memopt_core estimate``: the what-if memory planner on the command line.

Only a config is read (a preset, a config.json, or the config.json of a bundled or local model);
weights are never loaded, so this works for models far larger than the machine.
"""
from __future__ import annotations

import argparse
import json

from memopt_core.config import BUNDLED_MODELS
from memopt_core.errors import ConfigError, ModelLoadError
from memopt_core.paths import user_path
from memopt_core.planning.planner import MemoryEstimate, PlanConfig, estimate, fits_on, format_gib
from memopt_core.planning.presets import COMPONENTS, list_presets, load_preset

_DEFAULTS = PlanConfig()
_PER_CHANNEL = ("per-channel", "none", "0")
_MiB = 2**20


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``estimate`` subcommand; its ``handler`` default is ``run_estimate`` (what cli.main calls)."""
    parser = subparsers.add_parser(
        "estimate", help="estimate memory from a model config alone (no weights)",
        description="Estimate weights, KV cache and activation memory at a compression setting from a "
                    "config.json alone, and say which accelerators it fits.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", metavar="NAME", help=f"a bundled config: {', '.join(list_presets())}")
    source.add_argument("--config", metavar="FILE", help="a config.json, or a folder holding one")
    source.add_argument("--model", metavar="M",
                        help="a bundled model key or a local model folder (reads its config.json only)")
    parser.add_argument("--bits", type=int, default=_DEFAULTS.bits, help="weight bits: 2, 3, 4, 5, 6, 8 or 16 (none)")
    parser.add_argument("--group-size", default=str(_DEFAULTS.group_size), metavar="G",
                        help="inputs per scale group, or 'per-channel' (default %(default)s)")
    parser.add_argument("--asymmetric", action="store_true", help="store an fp16 zero point per group too")
    parser.add_argument("--sparsity", type=float, default=_DEFAULTS.sparsity,
                        help="fraction of weights pruned, 0 to 0.95")
    parser.add_argument("--sparsity-format", default=_DEFAULTS.sparsity_format,
                        help="'dense' (zeros stored: no saving) or 'bitmask' (1 bit per weight + non-zeros)")
    parser.add_argument("--context", type=int, default=_DEFAULTS.context,
                        help="tokens per sequence (default %(default)s)")
    parser.add_argument("--batch", type=int, default=_DEFAULTS.batch, help="sequences at once (default %(default)s)")
    parser.add_argument("--kv-bits", type=int, default=_DEFAULTS.kv_bits, help="KV-cache bits: 16, 8 or 4")
    parser.add_argument("--base-bytes", type=int, default=_DEFAULTS.base_dtype_bytes,
                        help="bytes per uncompressed parameter (embeddings, norms, lm_head): 1, 2 or 4")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.set_defaults(handler=run_estimate)
    return parser


def run_estimate(args: argparse.Namespace) -> int:
    """Print the estimate for ``args`` (JSON with ``--json``, else a table); MemoptError on bad input."""
    name, source = resolve_source(args)
    result = estimate(source, plan_from_args(args))
    verdicts = fits_on(result.total_bytes)
    if args.json:
        print(json.dumps({**result.to_dict(), "source": name, "fits_on": verdicts}, indent=2))
    else:
        print(format_report(name, result, verdicts))
    return 0


def parse_group_size(text: str) -> int | None:
    """``'128'`` or ``'g128'`` -> 128; ``'per-channel'``, ``'none'`` or ``'0'`` -> None."""
    value = str(text).strip().lower()
    if value in _PER_CHANNEL:
        return None
    digits = value[1:] if value.startswith("g") else value
    if not digits.isdigit():
        raise ConfigError(f"group size {text!r} is not a whole number; give e.g. 32, 64, 128 or 'per-channel'")
    return int(digits)


def plan_from_args(args: argparse.Namespace) -> PlanConfig:
    """The PlanConfig the flags describe (it validates itself)."""
    return PlanConfig(bits=args.bits, group_size=parse_group_size(args.group_size), symmetric=not args.asymmetric,
                      sparsity=args.sparsity, sparsity_format=args.sparsity_format, context=args.context,
                      batch=args.batch, kv_bits=args.kv_bits, base_dtype_bytes=args.base_bytes)


def resolve_source(args: argparse.Namespace) -> tuple[str, dict | str]:
    """(display name, config source) from --preset, --config or --model."""
    if args.preset is not None:
        return args.preset, load_preset(args.preset)
    if args.config is not None:
        return args.config, args.config
    model = args.model.strip()
    if model in list_presets():
        return model, load_preset(model)
    folder = user_path(model, "model")
    if folder.is_dir():
        return model, str(folder)
    if model in BUNDLED_MODELS:
        raise ModelLoadError(f"bundled model {model!r} has no config preset; "
                             f"choose --preset from {', '.join(list_presets())}")
    raise ModelLoadError(f"model {model!r} is neither a preset ({', '.join(list_presets())}) nor a local folder; "
                         "hub downloads are unavailable here: save its config.json and pass --config FILE")


def _size(n: int) -> str:
    """GiB, with MiB added for small figures that would otherwise read 0.00 GiB."""
    text = format_gib(n)
    return text if abs(n) >= 2**30 // 10 or n == 0 else f"{text} ({n / _MiB:.1f} MiB)"


def format_report(name: str, result: MemoryEstimate, verdicts: list[dict]) -> str:
    """A short human table: GiB figures per part, fits-on verdicts and the assumptions."""
    plan = result.plan
    rows = [f"memopt estimate: {name} - {result.model}",
            f"{'plan':<14}{plan.label}, KV {plan.kv_bits}-bit, batch {plan.batch} x {plan.context:,} tokens",
            f"{'parameters':<14}{result.params:,} ({result.targeted_params:,} targeted)",
            f"{'weights':<14}{_size(result.weights_bytes):<24}"
            f"{result.bits_per_weight:.3f} bits per targeted weight"]
    rows += [f"  {part:<12}{_size(result.breakdown[part])}" for part in COMPONENTS if result.breakdown[part]]
    rows += [f"{'KV cache':<14}{_size(result.kv_cache_bytes)}",
             f"{'activations':<14}{_size(result.activation_bytes)}",
             f"{'total':<14}{_size(result.total_bytes)}", "", "fits on"]
    width = max(len(v["name"]) for v in verdicts)
    rows += [f"  {v['name']:<{width}}  {'yes' if v['fits'] else 'no ':<3}  headroom {format_gib(v['headroom_bytes'])}"
             for v in verdicts]
    rows += ["", "notes"] + [f"  - {note}" for note in result.notes]
    return "\n".join(rows)
