"""`jaxlm predict`: run a fine-tuned model on inputs, one JSON line per input line.

Classifiers: each line is a text; out: {"text", "label", "probs"}. Generative runs: each line is a
record, a JSON object with the fields the run's prompt template names (or, when the template names
one field, plain text as that field's value); out: {"input", "output"}, the output generated from
the prompt built exactly as in training (the run's templates and chat template), with the run's
generation settings unless --max-new-tokens, --temperature, --top-k, --top-p or --seed say
otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys

from jaxlm.commands import (add_flag, add_generation_args, checkpoint_arg, generation_args,
                            positive_int)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm predict` and its options on the subcommand parsers."""
    p = sub.add_parser("predict", help="classify texts or generate answers (JSONL out)",
                       description=__doc__)
    p.add_argument("--run", required=True, help="run directory of a finetune run")
    p.add_argument("--input", default="-", help="one input per line: a text, or a JSON record "
                   "for a generative run ('-': stdin)")
    add_flag(p, "--out", "--output", dest="output", default="-", metavar="FILE",
             help="JSONL file ('-': stdout)")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="best",
                   help="best, latest or a step number")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--encoding", default="utf-8")
    add_generation_args(p, "generative runs: ")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm predict` with parsed arguments; returns the exit code."""
    from jaxlm.data.text import read_text
    from jaxlm.run import Run, check_output_path

    if args.output != "-":
        from jaxlm.atomic import check_writable
        check_output_path(args.output, "--out")
        check_writable(args.output, "the predictions")

    text = sys.stdin.read() if args.input == "-" else read_text(args.input, args.encoding,
                                                                 "input file")
    run_ = Run(args.run).load(args.checkpoint)
    if run_.task == "generative":
        rows = _generate(run_, text.splitlines(), args)
    else:
        rows = _classify(run_, [line for line in text.splitlines() if line.strip()], args)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from jaxlm.atomic import write_output, writing
        with writing(args.output, "the predictions"):
            write_output(args.output, text)
    return 0


def _classify(run_, lines: list[str], args: argparse.Namespace) -> list[dict]:
    from jaxlm.inference import predict_proba

    given = ["--" + k.replace("_", "-") for k in generation_args(args)]
    if given:
        from jaxlm.errors import ConfigError
        raise ConfigError(f"{', '.join(given)} set how a generative run generates, but "
                          f"'{args.run}' holds a {run_.task} model, which does not generate. "
                          "Leave them out.", culprit=given[0])
    probs = predict_proba(run_, lines, args.batch_size)
    names = run_.class_names
    return [{"text": line, "label": names[int(p.argmax())],
             "probs": {n: round(float(x), 6) for n, x in zip(names, p)}}
            for line, p in zip(lines, probs)]


def _generate(run_, lines: list[str], args: argparse.Namespace) -> list[dict]:
    from jaxlm.inference import generate_records

    name = "stdin" if args.input == "-" else args.input
    pairs = generate_records(run_, lines, batch_size=args.batch_size,
                             generation=generation_args(args), name=name)
    return [{"input": given, "output": output} for given, output in pairs]
