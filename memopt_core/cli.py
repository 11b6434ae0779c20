"""Command line: ``python -m memopt_core {run,sweep,estimate,sensitivity,models} ...``.

Every known failure ends with one line ``error: <message>`` on stderr and exit status 2;
nothing prints a traceback unless ``MEMOPT_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from memopt_core.errors import MemoptError, ResourceError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, not the whole usage block."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from memopt_core import cli_estimate, cli_models, cli_run, cli_sensitivity, cli_sweep

    parser = OneLineParser(prog="python -m memopt_core",
                           description="Prune and quantize language models; measure quality and memory.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in (cli_run, cli_sweep, cli_estimate, cli_sensitivity, cli_models):
        module.register(sub)
    return parser


def print_json(data: dict) -> None:
    json.dump(data, sys.stdout, indent=2, default=str, allow_nan=True)
    sys.stdout.write("\n")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _quiet_libraries() -> None:
    """transformers' progress bars and warnings would bury the one-line results and errors."""
    from transformers.utils import logging as hf_logging

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
        return _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted; finished results are kept", EXIT_INTERRUPTED)
    except MemoryError:
        return _fail(str(ResourceError("out of memory; try a smaller model, fewer tokens or a lower precision")), EXIT_USAGE)
    except Exception as error:  # a bug: say so in one line, keep the traceback for who asks
        if os.environ.get("MEMOPT_DEBUG") == "1":
            traceback.print_exc()
        return _fail(f"internal error ({type(error).__name__}: {error}); rerun with MEMOPT_DEBUG=1 for details",
                     EXIT_INTERNAL)
