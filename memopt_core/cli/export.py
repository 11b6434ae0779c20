"""``export``: write a setting (or a ``run --save`` folder) as GGUF, compressed-tensors or ONNX.

``--type`` alone sets the matching memopt setting (``Q4_1`` = 4-bit asymmetric g32 with a float
minimum); a typed compression flag that says otherwise is refused in one line. ``--verify`` loads
the files back with the format's own reader and scores them on the same windows.
"""
from __future__ import annotations

import argparse

from memopt_core.cli.common import (INTEGER_QUANT_METHODS, add_calib_arguments, add_eval_arguments, calib_config,
                                    eval_config, print_json, quant_kwargs)
from memopt_core.config import (DEVICES, DTYPES, PRUNE_METHODS, PRUNE_PATTERNS, RANGE_METHODS, ModelSpec,
                                PruneConfig, QuantConfig, RunConfig, TargetConfig)
from memopt_core.errors import ConfigError
from memopt_core.export.formats import FORMATS, TYPES, format_type, setting_for_type

_TYPE_HELP = "; ".join(f"{fmt}: {', '.join(table)}" for fmt, table in TYPES.items())


def register(sub) -> None:
    parser = sub.add_parser("export", help="write a compressed model as GGUF, compressed-tensors or ONNX")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="bundled name, local folder or Hugging Face id (compressed first)")
    source.add_argument("--from", dest="from_dir", metavar="DIR", help="a folder written by 'run --save', as it is")
    parser.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICES)} (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--type", default=None, help=f"the format's type ({_TYPE_HELP}); alone it sets the setting")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for the export")
    parser.add_argument("--verify", action="store_true", help="load the export back and measure it on the same windows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_compression_arguments(parser)
    add_calib_arguments(parser)
    add_eval_arguments(parser)
    parser.set_defaults(handler=handle_export)


def _add_compression_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``run``, with None defaults so a typed flag can be told from a default."""
    parser.add_argument("--prune-method", default="magnitude", help=f"{', '.join(PRUNE_METHODS)}; '2:4', '4:8'")
    parser.add_argument("--prune-ratio", type=float, default=0.0)
    parser.add_argument("--prune-pattern", default="unstructured", choices=PRUNE_PATTERNS)
    parser.add_argument("--bits", default=None, help="2, 3, 4, 5, 6, 8, 16 (none), fp16 or bf16")
    parser.add_argument("--quant-method", default="rtn", choices=INTEGER_QUANT_METHODS)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--per-tensor", action="store_true")
    parser.add_argument("--asymmetric", action="store_true")
    parser.add_argument("--zero-point", default=None, choices=("int", "float"))
    parser.add_argument("--range", dest="range_method", default="minmax", choices=RANGE_METHODS)
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--exclude", action="append", default=[])


def explicit_flags(args: argparse.Namespace) -> dict[str, object]:
    """The quantization flags the user typed, as the values a setting is compared with."""
    typed: dict[str, object] = {}
    if args.bits is not None:
        text = str(args.bits).strip().lower()
        typed["bits"] = 16 if text in ("16", "none", "fp32", "32") else (int(text) if text.isdigit() else text)
    if args.group_size is not None:
        typed["group_size"] = args.group_size
    if args.asymmetric:
        typed["asymmetric"] = True
    if args.zero_point is not None:
        typed["zero_point"] = args.zero_point
    if args.per_tensor:
        typed["per_tensor"] = True
    return typed


def export_quant(args: argparse.Namespace) -> QuantConfig | None:
    """The memopt quantization for this export: from ``--type`` when given, else from the flags."""
    flags = argparse.Namespace(**{**vars(args), "zero_point": args.zero_point or "int", "fake": False})
    kwargs = {**quant_kwargs(flags), "method": args.quant_method}
    given = QuantConfig.from_bits(args.bits or "16", **kwargs)
    if args.type is None:
        return given
    return setting_for_type(format_type(args.format, args.type), given, explicit_flags(args))


def _refuse_flags_with_from(args: argparse.Namespace) -> None:
    typed = list(explicit_flags(args)) + (["prune_ratio"] if args.prune_ratio else [])
    if typed:
        raise ConfigError(f"--from exports the saved model as it is; --{typed[0].replace('_', '-')} cannot change it "
                          "(run 'run --save' with the new setting first)")


def handle_export(args: argparse.Namespace) -> int:
    # torch, transformers and the format libraries load here: `--help` and argument errors stay instant.
    from memopt_core.cli.export_report import format_export
    from memopt_core.export.service import ExportRequest, export
    from memopt_core.export.files import check_destination
    from memopt_core.export.sources import source_from_run, source_from_saved
    from memopt_core.runs.workbench import Workbench

    group = args.group_size if args.format == "compressed-tensors" else None
    request = ExportRequest(args.format, args.type, group, args.verify)
    evaluation = eval_config(args)
    check_destination(args.out)  # a bad --out must not cost the run
    if args.from_dir is not None:
        _refuse_flags_with_from(args)
        source = source_from_saved(args.from_dir, evaluation, device=args.device)
    else:
        prune = PruneConfig.from_cli(args.prune_method, args.prune_ratio, args.prune_pattern)
        config = RunConfig(model=ModelSpec(args.model, device=args.device, dtype=args.dtype,
                                           trust_remote_code=args.trust_remote_code),
                           prune=prune, quant=export_quant(args), eval=evaluation, calib=calib_config(args),
                           targets=TargetConfig(include=tuple(args.include), exclude=tuple(args.exclude)))
        source = source_from_run(Workbench.load(config.model), config)
    report = export(source, request, args.out)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_export(report.to_dict()))
    return 0
