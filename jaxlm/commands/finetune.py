"""`jaxlm finetune`: train a sequence classifier (train.task: classification) or teach a causal LM
to generate each record's target (train.task: generative), from scratch or from a pretrained
checkpoint."""
from __future__ import annotations

import argparse

from jaxlm.commands import add_config_args, tune_host_malloc


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm finetune` and its options on the subcommand parsers."""
    p = sub.add_parser("finetune", help="fine-tune a classifier or a generative model (resumes a run directory)",
                       description=__doc__)
    add_config_args(p)
    p.add_argument("--init-from", help="pretraining run dir (or RUN_DIR/checkpoints/STEP), or "
                   "hf:DIR for a Hugging Face checkpoint; overrides finetune.init_from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm finetune` with parsed arguments; returns the exit code."""
    from jaxlm.config import load_config
    from jaxlm.distributed import initialize
    from jaxlm.metrics import format_report
    from jaxlm.train.finetune import FINETUNE_TASKS, finetune, not_a_finetune_task

    overrides = list(args.overrides)
    if args.init_from:
        overrides.append(f"finetune.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    tune_host_malloc(cfg)  # before JAX starts
    if cfg.train.task not in FINETUNE_TASKS and _task_written(args.config, overrides):
        raise not_a_finetune_task(cfg.train.task)  # (left at its default: a classifier)
    initialize(cfg.distributed)  # multi-host jobs: before anything touches a device
    summary = finetune(cfg, args.run_dir, overwrite=args.overwrite, show_progress=not args.quiet)
    for split in ("validation", "test"):
        if split in summary:
            print(f"== {split} ==")
            print(format_report(summary[split]))
    parts = [f"step {summary['step']}"]
    if "best" in summary:
        parts.append(f"best val {summary['best']['metric']} {summary['best']['value']:.4f} "
                     f"at step {summary['best']['step']}")
    test = summary.get("test", {})
    for key in ("accuracy", "exact_match", "bleu"):
        if key in test:
            parts.append(f"test {key.replace('_', ' ')} {test[key]:.4f}")
    parts.append(f"wall {summary['wall_s']:.1f}s")
    parts.append(f"run dir {summary['run_dir']}")
    print("done: " + ", ".join(parts))
    return 0


def _task_written(config: str | None, overrides: list[str]) -> bool:
    """Whether the config file or a --set names train.task (or its old name train.objective)."""
    from jaxlm.config import load_yaml

    train = (load_yaml(config) if config else {}).get("train")
    written = isinstance(train, dict) and ("task" in train or "objective" in train)
    return written or any(o.split("=", 1)[0].strip() in ("train.task", "train.objective")
                          for o in overrides)
