"""Command line: ``python -m memopt_core {run,recover,sweep,estimate,sensitivity,export,models} ...``.

Every known failure ends with one line ``error: <message>`` on stderr and exit status 2;
nothing prints a traceback unless ``MEMOPT_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import os
import traceback

from transformers.utils import logging as hf_logging

from memopt_core.cli import estimate, export, models, recover, run, sensitivity, sweep
from memopt_core.cli.common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, fail
from memopt_core.errors import MemoptError, ResourceError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m memopt_core",
                           description="Prune and quantize language models; measure quality and memory.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in (run, recover, sweep, estimate, sensitivity, export, models):
        module.register(sub)
    return parser


def _quiet_libraries() -> None:
    """transformers' progress bars and warnings would bury the one-line results and errors."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    try:
        _quiet_libraries()
        return int(args.handler(args) or 0)
    except MemoptError as error:
        return fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted; finished results are kept", EXIT_INTERRUPTED)
    except MemoryError:
        return fail(str(ResourceError("out of memory; try a smaller model, fewer tokens or a lower precision")), EXIT_USAGE)
    except Exception as error:  # a bug: say so in one line, keep the traceback for who asks
        if os.environ.get("MEMOPT_DEBUG") == "1":
            traceback.print_exc()
        return fail(f"internal error ({type(error).__name__}: {error}); rerun with MEMOPT_DEBUG=1 for details",
                     EXIT_INTERNAL)
