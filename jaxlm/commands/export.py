"""`jaxlm export`: a run directory's model as a Hugging Face checkpoint folder that
transformers loads with from_pretrained (BertForSequenceClassification, BertForMaskedLM,
GPT2LMHeadModel, LlamaForCausalLM)."""
from __future__ import annotations

import argparse

from jaxlm.commands import add_flag, checkpoint_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm export` and its options on the subcommand parsers."""
    p = sub.add_parser("export", help="write a run's model as a Hugging Face checkpoint",
                       description=__doc__)
    p.add_argument("--run", required=True, metavar="DIR", help="run directory (pretrain, "
                   "finetune or convert)")
    add_flag(p, "--out", "--to-hf", dest="to_hf", required=True, metavar="DIR",
             help="the Hugging Face folder to write")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="best", help="best (a "
                   "fine-tuning run's best validation checkpoint; otherwise the latest), latest, "
                   "or a step number")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm export` with parsed arguments; returns the exit code."""
    from jaxlm.interop.convert import export_run
    from jaxlm.loading import load_model
    from jaxlm.run import check_output_path

    check_output_path(args.to_hf, "--out", folder=True)  # even with --overwrite

    loaded = load_model(args.run, checkpoint=args.checkpoint)
    s = export_run(loaded, args.to_hf, overwrite=args.overwrite)
    print(f"exported {s['family']} ({s['checkpoint']}) as {s['architecture']} -> {s['out']}")
    return 0
