"""``sweep``: a grid of settings on one model, stored as it goes, with a progress bar."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from tqdm import tqdm

from memopt_core.cli.common import (INTEGER_QUANT_METHODS, add_calib_arguments, add_eval_arguments, add_model_arguments,
                                    add_quant_arguments, calib_config, eval_config, model_spec, print_json,
                                    quant_kwargs)
from memopt_core.config import ClusterConfig
from memopt_core.errors import ConfigError, DataError, choices
from memopt_core.paths import user_path
from memopt_core.runs.ray_executor import RayExecutor
from memopt_core.runs.store import ResultStore
from memopt_core.runs.sweep import SweepGrid, run_sweep


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__} values")
    return parse


def register(sub) -> None:
    parser = sub.add_parser("sweep", help="run a grid of settings on one model")
    add_model_arguments(parser)
    parser.add_argument("--bits", type=_csv(str), default=("16", "8", "4"), help="e.g. 16,8,4,3,2 (16 = none)")
    parser.add_argument("--prune-method", type=_csv(str), default=("magnitude",),
                        help="comma-separated prune methods (magnitude, magnitude-global, l2-structured, wanda, "
                             "sparsegpt, 2:4, 4:8); wanda and sparsegpt calibrate (see --calib-*)")
    parser.add_argument("--quant-method", type=_csv(str), default=("rtn",),
                        help="comma-separated quantization methods: rtn, gptq (GPTQ calibrates, see --calib-*)")
    parser.add_argument("--prune-ratios", type=_csv(float), default=(0.0,), help="e.g. 0,0.25,0.5,0.75")
    parser.add_argument("--group-sizes", type=_csv(int), default=None, help="e.g. 32,128 (default per-channel)")
    parser.add_argument("--formats", type=_csv(str), default=("int",),
                        help="comma-separated number formats: int (the integer grid: --bits x --group-sizes), nf4, "
                             "fp8-e4m3, fp8-e5m2, mxfp4, nvfp4, q2_k, q3_k, q4_k, q6_k (each one setting at its own "
                             "bits; --double-quant reaches nf4)")
    add_quant_arguments(parser)
    add_calib_arguments(parser)
    add_eval_arguments(parser)
    parser.add_argument("--db", default=None, help="results database (default: in the memopt cache folder)")
    parser.add_argument("--name", default=None, help="a name to group this sweep's rows in the store")
    parser.add_argument("--out", default=None, help="write the table to this CSV file")
    parser.add_argument("--json", action="store_true", help="print the table as JSON records")
    parser.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="run the settings in this process (local) or on a Ray cluster's workers (ray)")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: the cluster to join (host:port, ray://host:port or auto); "
                             "default: a local cluster on this machine only")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --executor ray: worker processes, each loading the model once "
                             "(default: the cluster's CPUs / --cpus-per-worker)")
    parser.add_argument("--cpus-per-worker", type=int, default=1,
                        help="with --executor ray: CPUs (and compute threads) per worker (default 1)")
    parser.set_defaults(handler=handle_sweep)


@contextmanager
def _progress_bar():
    """A progress callback drawing a bar on stderr, closed even when the sweep fails."""
    # disable=None: no bar when stderr is not a terminal (pipes, logs), so an error stays one line there;
    # leave=False: a bar closed early (the sweep failed) is wiped before the error line is printed.
    bar = tqdm(total=None, file=sys.stderr, unit="setting", dynamic_ncols=True, disable=None, leave=False)

    def update(done: int, total: int, label: str, seconds_left: float | None) -> None:
        bar.total = total
        bar.n = done
        eta = f", ~{seconds_left:.0f}s left" if seconds_left is not None else ""
        bar.set_description_str(f"{label}{eta}")
        bar.refresh()
        if done == total:
            bar.close()
    try:
        yield update
    finally:
        bar.close()


def build_grid(args: argparse.Namespace):
    """The sweep's grid; quantizers are an axis (16 bits and casts are run once, not per quantizer)."""
    if not args.bits:
        raise ConfigError("--bits is empty; give at least one bit width, e.g. 16,8,4")
    if args.group_size is not None and args.group_sizes is not None:
        raise ConfigError("give either --group-size or --group-sizes, not both")
    unknown = [m for m in args.quant_method if m not in INTEGER_QUANT_METHODS]
    if unknown or not args.quant_method:
        raise ConfigError(f"quantization method {unknown[0] if unknown else ''!r} is not supported; "
                          f"choose {choices(INTEGER_QUANT_METHODS)}")
    groups = args.group_sizes or ((args.group_size,) if args.group_size is not None else (None,))
    options = {k: v for k, v in quant_kwargs(args).items() if k not in ("group_size", "granularity", "method")}
    if args.per_tensor:
        options["granularity"] = "per-tensor"
    return SweepGrid(prune_methods=args.prune_method, prune_ratios=args.prune_ratios, bits=args.bits,
                     group_sizes=groups, quant_methods=tuple(dict.fromkeys(args.quant_method)),
                     quant_options=options, formats=args.formats)


def check_out(path: str) -> None:
    """Refuse an --out that cannot be a CSV file: a folder, or a file in a folder that does not exist."""
    target = user_path(path, "--out")
    if target.is_dir():
        raise ConfigError(f"--out {path!r} is a folder; give a file name such as results.csv")
    if not target.parent.is_dir():
        raise ConfigError(f"--out {path!r}: the folder {str(target.parent)!r} does not exist")


def build_executor(args: argparse.Namespace) -> RayExecutor | None:
    """None (this process) or a RayExecutor; Ray flags without --executor ray are refused."""
    ray_flags = args.address is not None or args.workers is not None or args.cpus_per_worker != 1
    if args.executor == "local":
        if ray_flags:
            raise ConfigError("--address, --workers and --cpus-per-worker apply to --executor ray")
        return None
    return RayExecutor(ClusterConfig(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker))


def handle_sweep(args: argparse.Namespace) -> int:
    spec, grid, evaluation = model_spec(args), build_grid(args), eval_config(args)
    executor = build_executor(args)
    if args.out:
        check_out(args.out)  # before the sweep: a typo in --out must not cost the sweep's results
    store = ResultStore(args.db)
    with _progress_bar() as progress:
        result = run_sweep(spec, grid, evaluation, store=store, progress=progress, sweep_name=args.name,
                           calib=calib_config(args), executor=executor)
    if args.out:
        try:
            result.table.to_csv(args.out, index=False)
        except OSError as error:
            raise DataError(f"cannot write {args.out!r}: {error.strerror or error}") from None
    if args.json:
        print_json({"rows": result.table.to_dict(orient="records"), "from_store": result.from_store,
                    "computed": result.computed, "seconds": result.seconds})
    else:
        columns = [c for c in ("setting", "perplexity", "cosine_similarity", "accuracy", "bits_per_weight",
                               "stored_bytes", "x_smaller", "sparsity", "pareto") if c in result.table]
        print(result.table[columns].to_string(index=False))
        print(f"{result.computed} computed, {result.from_store} from the store ({store.path}), "
              f"{result.seconds:.1f}s")
    return 0
