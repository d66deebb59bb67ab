"""`jaxlm info RUN_DIR`: what a run directory holds: kind (pretrain, finetune, converted),
model and parameter count, steps done, last/best/final metrics, checkpoints and files."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm info` and its options on the subcommand parsers."""
    p = sub.add_parser("info", help="describe one run directory", description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm info` with parsed arguments; returns the exit code."""
    from jaxlm.run import Run
    from jaxlm.run_info import format_info

    info = Run(args.run_dir).describe()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
