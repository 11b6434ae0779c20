"""``run``: compress one model at one setting, evaluate it, report memory (``--json`` for machines)."""
from __future__ import annotations

import argparse

from memopt_core.config import (DEVICES, DTYPES, PRUNE_METHODS, PRUNE_PATTERNS, RANGE_METHODS, CalibConfig,
                                EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig, TargetConfig)

INTEGER_QUANT_METHODS = ("rtn", "gptq")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundled name (see 'models'), local folder or Hugging Face id")
    parser.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICES)} (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="compute dtype of baseline and compressed")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a hub model to run its author's Python code (off by default)")


def add_quant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-size", type=int, default=None, help="quantize in groups of G input columns "
                        "(default: one scale per output channel)")
    parser.add_argument("--per-tensor", action="store_true", help="one scale for the whole weight")
    parser.add_argument("--asymmetric", action="store_true", help="min/max grid with a zero point")
    parser.add_argument("--zero-point", default="int", choices=("int", "float"),
                        help="asymmetric zero point: integer (GPTQ) or float minimum (GGUF Q4_1)")
    parser.add_argument("--range", dest="range_method", default="minmax", choices=RANGE_METHODS)
    parser.add_argument("--fake", action="store_true", help="keep dequantized floats (memory saving simulated)")


def add_calib_arguments(parser: argparse.ArgumentParser) -> None:
    """Calibration data and solver flags (used by GPTQ, Wanda and SparseGPT only)."""
    defaults = CalibConfig()
    parser.add_argument("--calib-text", default=defaults.text,
                        help="calibration text: 'both' (half wikipedia, half news), 'wikipedia', 'news' or a UTF-8 "
                             "file; windows come from beyond the evaluated tokens")
    parser.add_argument("--calib-samples", type=int, default=defaults.samples, help="calibration sequences (default 64)")
    parser.add_argument("--calib-len", type=int, default=defaults.seq_len, help="tokens per calibration sequence (default 512)")
    parser.add_argument("--calib-seed", type=int, default=defaults.seed, help="seed of the calibration draw (default 0)")
    parser.add_argument("--no-act-order", action="store_true",
                        help="GPTQ: quantize columns in their stored order, not by decreasing activation energy")


def calib_config(args: argparse.Namespace) -> CalibConfig:
    return CalibConfig(text=args.calib_text, samples=args.calib_samples, seq_len=args.calib_len, seed=args.calib_seed)


def gptq_options(args: argparse.Namespace):
    from memopt_core.primitives.gptq import GPTQOptions

    return GPTQOptions(act_order=not args.no_act_order)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-text", default="wikipedia", help="'wikipedia', 'news' or a UTF-8 text file")
    parser.add_argument("--seq-len", type=int, default=512, help="window length in tokens (default 512)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="evaluate the first N tokens (default 4096)")
    parser.add_argument("--prompt", default=EvalConfig.prompt, help="prompt for the greedy generation sample")
    parser.add_argument("--gen-tokens", type=int, default=EvalConfig.gen_tokens)
    parser.add_argument("--kl-top-k", type=int, default=64,
                        help="KL over the original's top-k tokens plus one bucket for the rest (default 64; "
                             "0 = exact, which holds the original's full log-probs in memory)")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot sentiment accuracy")


def register(sub) -> None:
    parser = sub.add_parser("run", help="compress one model at one setting and evaluate it")
    add_model_arguments(parser)
    parser.add_argument("--prune-method", default="magnitude",
                        help=f"{', '.join(PRUNE_METHODS)}; '2:4' and '4:8' are shorthands for magnitude N:M")
    parser.add_argument("--prune-ratio", type=float, default=0.0, help="fraction of weights removed, 0 to 0.95")
    parser.add_argument("--prune-pattern", default="unstructured", choices=PRUNE_PATTERNS)
    parser.add_argument("--bits", default="16", help="2, 3, 4, 5, 6, 8, 16 (none), fp16 or bf16")
    parser.add_argument("--quant-method", default="rtn", choices=INTEGER_QUANT_METHODS,
                        help="round-to-nearest, or GPTQ (calibrated; error-correcting)")
    add_quant_arguments(parser)
    add_calib_arguments(parser)
    add_eval_arguments(parser)
    parser.add_argument("--include", action="append", default=[], help="fnmatch pattern of Linear names to target")
    parser.add_argument("--exclude", action="append", default=[], help="fnmatch pattern of Linear names to skip")
    parser.add_argument("--save", default=None, metavar="DIR", help="write the compressed model to DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle_run)


def quant_kwargs(args: argparse.Namespace) -> dict:
    granularity = "per-tensor" if args.per_tensor else ("group" if args.group_size is not None else "per-channel")
    kwargs = dict(method=getattr(args, "quant_method", "rtn"), granularity=granularity,
                  symmetric=not args.asymmetric, range_method=args.range_method,
                  storage="fake" if args.fake else "packed", zero_point=args.zero_point if args.asymmetric else "int")
    if args.group_size is not None:
        kwargs["group_size"] = args.group_size
    return kwargs


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def eval_config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(text=args.eval_text, seq_len=args.seq_len, max_tokens=args.max_tokens, prompt=args.prompt,
                      gen_tokens=args.gen_tokens, kl_top_k=args.kl_top_k or None, zero_shot=not args.no_zero_shot)


def run_config(args: argparse.Namespace) -> RunConfig:
    prune = PruneConfig.from_cli(args.prune_method, args.prune_ratio, args.prune_pattern)
    return RunConfig(model=model_spec(args), prune=prune, quant=QuantConfig.from_bits(args.bits, **quant_kwargs(args)),
                     targets=TargetConfig(include=tuple(args.include), exclude=tuple(args.exclude)),
                     eval=eval_config(args), calib=calib_config(args))


def handle_run(args: argparse.Namespace) -> int:
    from memopt_core.cli import print_json
    from memopt_core.report import format_run
    from memopt_core.runner import run

    config = run_config(args)  # validate every setting before loading anything
    if args.save is not None:  # and where the result goes: a bad --save must not cost the run
        from memopt_core.saving import check_save_target

        check_save_target(args.save)
    result = run(config, save_dir=args.save, gptq=gptq_options(args))
    if args.json:
        print_json(result.to_dict())
    else:
        print(format_run(result))
    return 0
