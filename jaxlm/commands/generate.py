"""`jaxlm generate`: continue prompts with a trained causal LM, streaming the text as it comes.

With --reference-file (one reference per line, aligned with the prompts) the generations are
scored with BLEU (sacrebleu) and ROUGE-1/2/L (rouge-score). A generative fine-tuning run continues
the text exactly as given; `jaxlm predict` builds its prompts with the run's templates instead.
"""
from __future__ import annotations

import argparse
import json
import sys

from jaxlm.commands import add_flag, checkpoint_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm generate` and its options on the subcommand parsers."""
    p = sub.add_parser("generate", help="generate text from a trained causal LM run",
                       description=__doc__)
    p.add_argument("--run", required=True, metavar="DIR",
                   help="a run directory (pretrain or `jaxlm convert`), a Hugging Face folder "
                   "or hf:org/name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text to continue")
    src.add_argument("--prompt-file", metavar="F", help="one prompt per line (blank lines skipped)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="1.0 = off")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--stop", action="append", default=None, metavar="TOKEN",
                   help="a token that ends generation (repeatable; default: the tokenizer's "
                   "end-of-text token)")
    add_flag(p, "--checkpoint", "--step", type=checkpoint_arg, default="latest",
             help="latest (default), best, or a step number")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts decoded together")
    p.add_argument("--reference-file", metavar="F",
                   help="one reference per line, aligned with the prompts: print BLEU and ROUGE")
    add_flag(p, "--out", "--output", dest="output", metavar="F",
             help="write JSON lines {prompt, completion} here")
    p.add_argument("--no-stream", action="store_true", help="print each completion when done")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm generate` with parsed arguments; returns the exit code."""
    from jaxlm.errors import ConfigError
    from jaxlm.generate import Generator, warn_unknown
    from jaxlm.generation.scoring import bleu_rouge, read_lines
    from jaxlm.loading import load_model
    from jaxlm.sharding import mesh_for_run
    from jaxlm.run import check_output_path

    if args.output:
        check_output_path(args.output, "--out")

    prompts = [args.prompt] if args.prompt is not None else read_lines(args.prompt_file,
                                                                       "prompt file")
    refs = read_lines(args.reference_file, "reference file") if args.reference_file else None
    if refs is not None and len(refs) != len(prompts):
        from jaxlm.errors import DataError
        raise DataError(f"The reference file has {len(refs)} lines but there are {len(prompts)} "
                        "prompts: give exactly one reference line per prompt, in order.",
                        culprit=args.reference_file)
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is None:  # (--step, the older spelling)
        checkpoint = args.step if getattr(args, "step", None) is not None else "latest"
    lm = load_model(args.run, checkpoint=checkpoint)
    if lm.task not in ("causal", "generative"):  # a generative run is a fine-tuned causal LM
        raise ConfigError(f"'{args.run}' holds a '{lm.task}' model; generation needs a causal "
                          "language model (a run trained with train.task=causal or generative, "
                          "or a GPT-2/Llama checkpoint).", culprit=str(args.run))
    mesh = mesh_for_run(lm.cfg.mesh if lm.cfg is not None else None)
    rules = lm.cfg.mesh.rules if lm.cfg is not None else None
    gen = Generator(lm.model, lm.tokenizer, mesh=mesh, rules=rules, batch_size=args.batch_size)
    stream = len(prompts) == 1 and not args.no_stream

    def on_text(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    warn_unknown(lm.tokenizer, prompts)  # before the prompt is echoed
    if stream:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
    outs = gen.generate(prompts, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed, stop=args.stop, on_text=on_text if stream else None)
    if stream:
        sys.stdout.write("\n")
    else:
        for i, (p, o) in enumerate(zip(prompts, outs)):
            sys.stdout.write((f"### {i}\n" if len(prompts) > 1 else "") + p + o + "\n")
    if args.output:
        from jaxlm.atomic import write_output, writing
        with writing(args.output, "the completions", "The text above was not saved."):
            write_output(args.output, "".join(
                json.dumps({"prompt": p, "completion": o}, ensure_ascii=False) + "\n"
                for p, o in zip(prompts, outs)))
    if refs is not None:
        scores = bleu_rouge(outs, refs)
        sys.stdout.write("scores: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) + "\n")
    return 0
