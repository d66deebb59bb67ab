"""`jaxlm predict`: label texts with a fine-tuned classifier, one JSON line per input line."""
from __future__ import annotations

import argparse
import json
import sys

from jaxlm.commands import add_flag, checkpoint_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm predict` and its options on the subcommand parsers."""
    p = sub.add_parser("predict", help="classify texts (JSONL out)", description=__doc__)
    p.add_argument("--run", required=True, help="run directory of a finetune run")
    p.add_argument("--input", default="-", help="text file, one input per line ('-': stdin)")
    add_flag(p, "--out", "--output", dest="output", default="-", metavar="FILE",
             help="JSONL file ('-': stdout)")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="best",
                   help="best, latest or a step number")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--encoding", default="utf-8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm predict` with parsed arguments; returns the exit code."""
    from jaxlm.data.text import read_text
    from jaxlm.inference import predict_proba
    from jaxlm.run import Run, check_output_path

    if args.output != "-":
        check_output_path(args.output, "--out")

    text = sys.stdin.read() if args.input == "-" else read_text(args.input, args.encoding,
                                                                 "input file")
    lines = [line for line in text.splitlines() if line.strip()]
    run_ = Run(args.run).load(args.checkpoint)
    probs = predict_proba(run_, lines, args.batch_size)
    names = run_.class_names
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        for line, p in zip(lines, probs):
            out.write(json.dumps({"text": line, "label": names[int(p.argmax())],
                                  "probs": {n: round(float(x), 6) for n, x in zip(names, p)}})
                      + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
