"""`jaxlm convert`: a Hugging Face checkpoint (BERT/MiniLM, GPT-2, Llama) as a jaxlm run directory."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm convert` and its options on the subcommand parsers."""
    p = sub.add_parser("convert", help="import a Hugging Face checkpoint into a run directory",
                       description=__doc__)
    p.add_argument("--from-hf", required=True, metavar="DIR",
                   help="Hugging Face checkpoint folder (config.json + model.safetensors), "
                   "hf:DIR, or hf:org/name (needs huggingface_hub and the Hub)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--task", choices=("causal", "masked", "classification"),
                   help="what the run is for (default: what the checkpoint was saved for)")
    p.add_argument("--num-labels", type=int, help="classes, for --task classification when the "
                   "checkpoint has no classifier (or a different number of labels)")
    p.add_argument("--seed", type=int, default=0, help="init seed for heads the checkpoint lacks")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm convert` with parsed arguments; returns the exit code."""
    from jaxlm.atomic import writing
    from jaxlm.interop.convert import convert_hf_to_run
    from jaxlm.run import check_output_path

    check_output_path(args.out, "--out", folder=True, run_ok=True)
    with writing(args.out, "the run directory"):
        s = convert_hf_to_run(args.from_hf, args.out, task=args.task, num_labels=args.num_labels,
                              seed=args.seed, overwrite=args.overwrite)
    print(f"converted {s['model_type']} ({', '.join(s['architectures']) or 'no architecture'}) "
          f"for '{s['task']}': {s['params']:,} parameters -> {s['run_dir']}")
    if s["fresh"]:
        print(f"  initialised fresh (not in the checkpoint): {', '.join(s['fresh'])}")
    if s["unused"]:
        print(f"  in the checkpoint but unused by this task: {', '.join(s['unused'])}")
    if s["ignored"]:
        print("  skipped: " + ", ".join(f"{k} ({v})" for k, v in s["ignored"].items()))
    return 0
