"""`jaxlm runs [ROOT]`: a table of the runs under a folder (default runs/), nested ones
included: kind, task, model, parameters, steps done, status, last and best validation
metric, test accuracy and when each last logged."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm runs` and its options on the subcommand parsers."""
    p = sub.add_parser("runs", help="list the runs under a folder", description=__doc__)
    p.add_argument("root", nargs="?", default="runs", metavar="ROOT",
                   help="folder holding run directories (default runs)")
    p.add_argument("--params", action="store_true", help="count parameters of runs whose "
                   "summary.json lacks them (slower: builds each model abstractly)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm runs` with parsed arguments; returns the exit code."""
    from jaxlm.run_info import format_table, runs_table

    rows = runs_table(args.root, count_params=args.params)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no runs under {args.root}")
    else:
        print(format_table(rows))
    return 0
