"""``recover``: compress one setting, then distil the original into the compressed copy and report both.

The JSON is ``run``'s object measured after recovery, plus ``before_recovery`` (the same metrics
before it) and ``recovery`` (settings, steps, seconds, training data, curve, byte and sparsity checks).
Progress goes to stderr, one line per evaluation of the curve.
"""
from __future__ import annotations

import argparse
import sys

from memopt_core.cli.common import print_json
from memopt_core.cli.run import add_setting_arguments, run_config
from memopt_core.cli.text_report import format_run
from memopt_core.loading.saved import check_save_target, save_compressed
from memopt_core.recovery.config import TRAIN_LAYERS, RecoveryConfig, check_recoverable
from memopt_core.recovery.recover import recover
from memopt_core.recovery.stored import peek_recovered, store_recovered
from memopt_core.runs.store import ResultStore
from memopt_core.runs.workbench import Workbench


def register(sub) -> None:
    parser = sub.add_parser("recover", help="compress one setting, then recover quality by distillation from "
                                            "the original")
    add_setting_arguments(parser)
    defaults = RecoveryConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW learning rate (default {defaults.lr:g})")
    parser.add_argument("--tokens-per-step", type=int, default=defaults.tokens_per_step,
                        help=f"training tokens per step, a multiple of --train-len (default {defaults.tokens_per_step})")
    parser.add_argument("--train-len", type=int, default=defaults.seq_len,
                        help=f"tokens per training window (default {defaults.seq_len})")
    parser.add_argument("--sentences-per-step", type=int, default=defaults.sentences_per_step,
                        help=f"encoders: sentences per step (default {defaults.sentences_per_step})")
    parser.add_argument("--train-text", default=defaults.train_text,
                        help="'both' (default), 'wikipedia', 'news' or a UTF-8 file; never the evaluated tokens")
    parser.add_argument("--train-layers", default=defaults.layers, choices=TRAIN_LAYERS,
                        help="the compressed layers, with or without the norms (default compressed+norms)")
    parser.add_argument("--train-only", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern: only matching compressed layers train (repeatable)")
    parser.add_argument("--ce-weight", type=float, default=defaults.ce_weight,
                        help="weight of the next-token loss added to the KL (default 0)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help=f"score the held-out validation set every N steps (default {defaults.eval_every})")
    parser.add_argument("--validation-windows", type=int, default=defaults.validation_windows,
                        help=f"held-out windows per training text (default {defaults.validation_windows})")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--train-seed", type=int, default=defaults.seed, help="seed of the training data draw")
    parser.add_argument("--db", default=None, help="also store the result in this results database "
                                                   "(a stored full recovery answers at once)")
    parser.add_argument("--save", default=None, metavar="DIR", help="write the recovered model to DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle_recover)


def recovery_config(args: argparse.Namespace) -> RecoveryConfig:
    return RecoveryConfig(steps=args.steps, lr=args.lr, tokens_per_step=args.tokens_per_step, seq_len=args.train_len,
                          sentences_per_step=args.sentences_per_step, train_text=args.train_text,
                          layers=args.train_layers, only=tuple(args.train_only), ce_weight=args.ce_weight,
                          eval_every=args.eval_every, validation_windows=args.validation_windows,
                          seed=args.train_seed, max_seconds=args.max_seconds)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _report_update(update) -> None:
    point = update.point
    if point is None:
        return
    loss = "-" if point.loss is None else f"{point.loss:.4f}"
    best = " (best so far)" if point.best else ""
    _say(f"step {point.step}/{update.steps} · loss {loss} · validation {point.validation:.4f}{best} · "
         f"{point.seconds:.0f} s")


def format_recovery(result: dict) -> str:
    """The recovery lines of the text report."""
    recovery, checks = result["recovery"], result["recovery"]["checks"]
    metric = "perplexity" if "perplexity" in result["compressed"] else "cosine_similarity"
    before, after, base = result["before_recovery"][metric], result["compressed"][metric], result["baseline"][metric]
    lines = [f"recovery: {recovery['steps_done']} of {recovery['steps']} steps, {recovery['tokens']:,} tokens, "
             f"{recovery['seconds']:.0f} s ({recovery['stop_reason']}; best checkpoint at step {recovery['best_step']})",
             f"  {metric}: original {base:.4f}, compressed {before:.4f}, recovered {after:.4f}",
             f"  stored bytes before {checks['stored_bytes_before']:,}, after {checks['stored_bytes_after']:,}; "
             f"sparsity before {checks['sparsity_before']:.2%}, after {checks['sparsity_after']:.2%}",
             f"  training data: {recovery['data']['rule']} ({recovery['data']['text']})"]
    if recovery["message"]:
        lines.append(f"  {recovery['message']}")
    return "\n".join(lines)


def handle_recover(args: argparse.Namespace) -> int:
    config, recovery = run_config(args), recovery_config(args)  # validate everything before loading
    check_recoverable(config)
    if args.save is not None:
        check_save_target(args.save)
    store = None
    if args.db is not None:
        store = ResultStore(args.db)
        found = peek_recovered(config, recovery, store)
        if found is not None:
            _say(f"answered from the results store {store.path}")
            return _print(found, args.json)
    _say(f"loading {config.model.source}")
    bench = Workbench.load(config.model)
    run = recover(bench, config, recovery, on_phase=_say, on_update=_report_update)
    if store is not None:
        store_recovered(run.to_dict(), run.before_result.to_dict(), config, recovery, store)
    if args.save is not None:
        save_compressed(run.compressed, bench.loaded, run.result, args.save)
    return _print(run.to_dict(), args.json, run.result)


def _print(result: dict, as_json: bool, run_result=None) -> int:
    """The JSON object, or the text report (the run's own lines when it was computed here)."""
    if as_json:
        print_json(result)
        return 0
    if run_result is not None:
        print(format_run(run_result))
    print(format_recovery(result))
    return 0
