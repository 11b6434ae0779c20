"""``run``: compress one model at one setting, evaluate it, report memory (``--json`` for machines)."""
from __future__ import annotations

import argparse

from memopt_core.cli.common import (INTEGER_QUANT_METHODS, add_calib_arguments, add_eval_arguments,
                                    add_format_argument, add_model_arguments, add_quant_arguments, calib_config,
                                    eval_config, model_spec, print_json, print_json_line, quant_config)
from memopt_core.cli.text_report import format_run
from memopt_core.config import PRUNE_METHODS, PRUNE_PATTERNS, OffloadConfig, PruneConfig, RunConfig, TargetConfig
from memopt_core.errors import ConfigError
from memopt_core.evaluation.lm_records import Estimate
from memopt_core.loading.saved import check_save_target
from memopt_core.offload.layer_by_layer import run_layer_by_layer
from memopt_core.runs.workbench import run


def register(sub) -> None:
    parser = sub.add_parser("run", help="compress one model at one setting and evaluate it")
    add_setting_arguments(parser)
    parser.add_argument("--save", default=None, metavar="DIR", help="write the compressed model to DIR")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="cap the memory the model takes at the run's peak at SIZE (e.g. 300MB, 2GiB: resident "
                             "weights, one block streamed from disk and compressed, one window's working memory) "
                             "and compress and evaluate layer by layer, streaming the blocks that do not fit from "
                             "disk (same figures; a local folder of safetensors or a bundled model)")
    parser.add_argument("--offload-dir", default=None, metavar="DIR",
                        help="with --max-memory: where the compressed blocks are written while the run lasts "
                             "when there is no --save (default: the system's temporary folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--stream", action="store_true",
                        help="print one JSON line per scored window (tokens, perplexity, perplexity_ci95, "
                             "kl_divergence, kl_ci95, top1_agreement, ...), then the result as one JSON line")
    parser.add_argument("--target-ci", type=float, nargs="?", const=0.02, default=None, metavar="FRACTION",
                        help="stop once the 95%% interval of the perplexity ratio to the original is within "
                             "+-FRACTION (default 0.02 = +-2%%); the result is then an estimate from N tokens")
    parser.set_defaults(handler=handle_run)


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, pruning, quantization, calibration, evaluation and target flags (``run``, ``recover``)."""
    add_model_arguments(parser)
    parser.add_argument("--prune-method", default="magnitude",
                        help=f"{', '.join(PRUNE_METHODS)}; '2:4' and '4:8' are shorthands for magnitude N:M")
    parser.add_argument("--prune-ratio", type=float, default=0.0, help="fraction of weights removed, 0 to 0.95")
    parser.add_argument("--prune-pattern", default="unstructured", choices=PRUNE_PATTERNS)
    parser.add_argument("--bits", default=None, help="2, 3, 4, 5, 6, 8, 16 (none, the default), fp16 or bf16")
    add_format_argument(parser)
    parser.add_argument("--quant-method", default="rtn", choices=INTEGER_QUANT_METHODS,
                        help="round-to-nearest, or GPTQ (calibrated; error-correcting)")
    add_quant_arguments(parser)
    add_calib_arguments(parser)
    add_eval_arguments(parser)
    parser.add_argument("--include", action="append", default=[], help="fnmatch pattern of Linear names to target")
    parser.add_argument("--exclude", action="append", default=[], help="fnmatch pattern of Linear names to skip")


def run_config(args: argparse.Namespace) -> RunConfig:
    prune = PruneConfig.from_cli(args.prune_method, args.prune_ratio, args.prune_pattern)
    return RunConfig(model=model_spec(args), prune=prune, quant=quant_config(args, args.bits, args.format),
                     targets=TargetConfig(include=tuple(args.include), exclude=tuple(args.exclude)),
                     eval=eval_config(args), calib=calib_config(args))


def _print_estimate(step) -> None:
    if isinstance(step, Estimate):
        print_json_line(step.to_dict())


def offload_config(args: argparse.Namespace) -> OffloadConfig | None:
    """The layer-by-layer route's settings, or None for the in-memory route."""
    if args.max_memory is None:
        if args.offload_dir is not None:
            raise ConfigError("--offload-dir applies to the layer-by-layer route; give --max-memory too")
        return None
    return OffloadConfig.from_text(args.max_memory, args.offload_dir)


def handle_run(args: argparse.Namespace) -> int:
    config = run_config(args)  # validate every setting before loading anything
    offload = offload_config(args)
    if args.target_ci is not None and not 0 < args.target_ci < 1:
        raise ConfigError(f"--target-ci {args.target_ci} must be a fraction between 0 and 1 (0.02 = +-2%)")
    if offload is not None and (args.stream or args.target_ci is not None):
        raise ConfigError("--stream and --target-ci apply to the in-memory run; leave out --max-memory to use them")
    if args.save is not None:  # and where the result goes: a bad --save must not cost the run
        check_save_target(args.save)
    if offload is not None:
        result = run_layer_by_layer(config, offload, save_dir=args.save)
    else:  # --stream prints the estimates of the same loop the dashboard draws, then the result
        result = run(config, save_dir=args.save, target_ci=args.target_ci,
                     on_step=_print_estimate if args.stream else None)
    if args.stream:
        print_json_line(result.to_dict())
    elif args.json:
        print_json(result.to_dict())
    else:
        print(format_run(result))
    return 0
