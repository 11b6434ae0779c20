"""What every command shares: the one-line argument parser, JSON output, and the flags and
config builders of model, quantization, calibration and evaluation."""
from __future__ import annotations

import argparse
import json
import sys

from memopt_core.config import DEVICES, DTYPES, RANGE_METHODS, CalibConfig, EvalConfig, ModelSpec, SolverConfig

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
INTEGER_QUANT_METHODS = ("rtn", "gptq")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, not the whole usage block."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def print_json(data: dict) -> None:
    json.dump(data, sys.stdout, indent=2, default=str, allow_nan=True)
    sys.stdout.write("\n")


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


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
    return CalibConfig(text=args.calib_text, samples=args.calib_samples, seq_len=args.calib_len, seed=args.calib_seed,
                       solver=SolverConfig(act_order=not args.no_act_order))


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
