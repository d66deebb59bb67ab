"""`jaxlm info --run RUN_DIR` (or `jaxlm info RUN_DIR`): what a run directory holds: kind
(pretrain, finetune, converted), model and parameter count, steps done, last/best/final metrics,
checkpoints and files."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm info` and its options on the subcommand parsers."""
    p = sub.add_parser("info", help="describe one run directory", description=__doc__)
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory (same as "
                   "--run)")
    p.add_argument("--run", metavar="DIR", help="the run directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm info` with parsed arguments; returns the exit code."""
    from jaxlm.run import Run
    from jaxlm.run_info import format_info

    info = Run(_run_dir(args)).describe()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _run_dir(args: argparse.Namespace) -> str:
    """The run directory, given as --run or positionally (once)."""
    from jaxlm.errors import ConfigError

    if args.run and args.run_dir and args.run != args.run_dir:
        raise ConfigError(f"Two run directories given ('{args.run_dir}' and --run "
                          f"'{args.run}'); jaxlm info describes one. Pass only --run DIR.",
                          culprit="--run")
    if not (args.run or args.run_dir):
        raise ConfigError("No run directory given. Pass one, e.g. jaxlm info --run "
                          "runs/shakespeare_char.", culprit="--run")
    return args.run or args.run_dir
