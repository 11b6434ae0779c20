"""``models``: list the bundled models."""
from __future__ import annotations

import argparse

from memopt_core.cli.common import print_json
from memopt_core.loading.models import bundled_models


def register(sub) -> None:
    parser = sub.add_parser("models", help="list the bundled offline models")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=handle_models)


def handle_models(args: argparse.Namespace) -> int:
    models = bundled_models()
    if args.json:
        print_json({"models": models})
        return 0
    for entry in models:
        random = " (random weights)" if entry.get("is_random") else ""
        print(f"{entry['key']:14} {entry['kind']:12} {entry['params']:>12,} params  {entry['description']}{random}")
    return 0
