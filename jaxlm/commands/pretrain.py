"""`jaxlm pretrain`: train a language model (causal or masked) from a config."""
from __future__ import annotations

import argparse

from jaxlm.commands import add_config_args, tune_host_malloc


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm pretrain` and its options on the subcommand parsers."""
    p = sub.add_parser("pretrain", help="pretrain a language model (resumes a run directory)",
                       description=__doc__)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm pretrain` with parsed arguments; returns the exit code."""
    from jaxlm.config import load_config
    from jaxlm.distributed import initialize
    from jaxlm.train.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    tune_host_malloc(cfg)  # before JAX starts
    initialize(cfg.distributed)  # multi-host jobs: before anything touches a device
    summary = pretrain(cfg, args.run_dir, overwrite=args.overwrite, show_progress=not args.quiet)
    # the whole validation split, scored at the end; else the last (possibly sampled) validation
    train, val = summary["train"], summary.get("validation") or summary["val"]
    parts = [f"step {summary['step']}", f"train loss {train.get('loss', float('nan')):.4f}"]
    if val:
        parts.append(f"val loss {val['loss']:.4f}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:,.0f} tokens/s")
    parts.append(f"wall {summary['wall_s']:.1f}s")
    parts.append(f"run dir {summary['run_dir']}")
    print("done: " + ", ".join(parts))
    return 0
