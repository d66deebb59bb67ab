"""`jaxlm export`: a run directory's model as a Hugging Face checkpoint folder that
transformers loads with from_pretrained (BertForSequenceClassification, BertForMaskedLM,
GPT2LMHeadModel, LlamaForCausalLM). A LoRA run's adapters are merged into the weights, or with
--adapters-only written alone in the PEFT layout (adapter_config.json +
adapter_model.safetensors)."""
from __future__ import annotations

import argparse
import dataclasses

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
    p.add_argument("--adapters-only", action="store_true", help="a LoRA run: write the "
                   "adapters (and trained heads) alone, for peft's PeftModel.from_pretrained on "
                   "the base model, instead of the merged model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm export` with parsed arguments; returns the exit code."""
    from jaxlm.atomic import writing
    from jaxlm.interop.convert import export_run
    from jaxlm.loading import load_model
    from jaxlm.models.lora import merge_lora
    from jaxlm.run import check_output_path

    check_output_path(args.to_hf, "--out", folder=True)  # even with --overwrite

    loaded = load_model(args.run, checkpoint=args.checkpoint)
    if args.adapters_only:
        return _export_adapters(loaded, args)
    loaded = dataclasses.replace(loaded, model=merge_lora(loaded.model))  # W + scale * A @ B
    with writing(args.to_hf, "the Hugging Face checkpoint"):
        s = export_run(loaded, args.to_hf, overwrite=args.overwrite)
    print(f"exported {s['family']} ({s['checkpoint']}) as {s['architecture']} -> {s['out']}")
    return 0


def _export_adapters(loaded, args: argparse.Namespace) -> int:
    from jaxlm.interop.peft import export_adapters

    a = export_adapters(loaded, args.to_hf, overwrite=args.overwrite)
    print(f"exported {a['adapted']} LoRA adapters (rank {a['r']}, {a['checkpoint']}) as PEFT "
          f"{a['task_type']} -> {a['out']}")
    return 0
