"""`jaxlm plot RUN_DIR [RUN_DIR ...] --out FILE.png`: training and validation loss, learning
rate, throughput and (for classifiers) validation accuracy from each run's metrics.jsonl, several
runs overlaid, one colour per run."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm plot` and its options on the subcommand parsers."""
    p = sub.add_parser("plot", help="plot the training curves of one or more runs",
                       description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="image to write (.png, .svg or .pdf)")
    p.add_argument("--labels", default="", help="comma-separated legend labels, one per run "
                   "(default: the folder names)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="moving average over N logged training points (default 1: none)")
    p.add_argument("--log-loss", action="store_true", help="logarithmic loss axis")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm plot` with parsed arguments; returns the exit code."""
    from jaxlm.atomic import writing
    from jaxlm.plotting import plot_runs
    from jaxlm.run import check_output_path

    check_output_path(args.out, "--out")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    with writing(args.out, "the figure"):
        out = plot_runs(args.run_dirs, args.out, labels=labels, title=args.title or None,
                        smooth=args.smooth, log_loss=args.log_loss)
    print(f"wrote {out} ({len(args.run_dirs)} run{'s' if len(args.run_dirs) > 1 else ''})")
    return 0
