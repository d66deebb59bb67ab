"""`jaxlm evaluate`: score a trained run on a dataset.

Classifiers: loss, accuracy, macro and per-class precision/recall/F1 and the confusion matrix.
Language models: loss and perplexity, on the data and batches the run validated on unless
--data / --batch-size say otherwise. Generative runs: the loss on the targets, and an answer
generated for every prompt (with the run's saved settings unless --max-new-tokens, --temperature,
--top-k, --top-p or --seed say otherwise) scored by exact match, BLEU and ROUGE (and accuracy and
macro-F1 when the targets are labels); the JSON report holds every prediction. Printed as a table
and written as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.commands import add_generation_args, checkpoint_arg, generation_args, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm evaluate` and its options on the subcommand parsers."""
    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset", description=__doc__)
    p.add_argument("--run", required=True, help="run directory of a pretrain or finetune run")
    p.add_argument("--data", help="dataset spec (default: the run's test split, else validation)")
    p.add_argument("--split", default="test", help="split to read from a multi-split spec")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="best",
                   help="best, latest or a step number")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="rows per batch (default: the run's evaluation batch size, so a language "
                        "model's loss matches the validation loss the run logged)")
    p.add_argument("--out", help="JSON file for the report (default: RUN/eval_<split>.json, "
                   "the split evaluated)")
    add_generation_args(p, "generative runs: ")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm evaluate` with parsed arguments; returns the exit code."""
    from jaxlm.atomic import write_output, writing
    from jaxlm.evaluation import evaluate_run
    from jaxlm.metrics import format_report
    from jaxlm.run import Run, check_output_path

    if args.out:
        check_output_path(args.out, "--out")
    report = evaluate_run(args.run, args.data, split=args.split, checkpoint=args.checkpoint,
                          batch_size=args.batch_size or 0, generation=generation_args(args))
    out = Path(args.out) if args.out else Run(args.run).eval_path(report["split"])
    print(format_report(report))  # first: a report that cannot be saved is still seen
    check_output_path(out, "--out")
    with writing(out, "the report", "The report above was not saved."):
        write_output(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0
