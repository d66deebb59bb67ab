"""`jaxlm bench`: compile a config's train step and report its memory per device, step time,
tokens/s and MFU (random tokens; no data, no run directory). The step is the one training
builds: a generative fine-tune with finetune.lora trains its adapters alone."""
from __future__ import annotations

import argparse
import dataclasses
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm bench` and its options on the subcommand parsers."""
    p = sub.add_parser("bench", help="memory, speed and MFU of a config's train step",
                       description=__doc__)
    p.add_argument("--config", required=True, help="YAML experiment file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.num_layers=2 (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="X",
                   help="peak TFLOP/s of one device for MFU (default: measured with a matmul)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile and report memory and shardings; allocate and run nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm bench` with parsed arguments; returns the exit code."""
    from jaxlm.commands import tune_host_malloc
    from jaxlm.config import load_config
    from jaxlm.distributed import initialize
    from jaxlm.errors import ConfigError
    from jaxlm.train.bench import bench, format_result

    if args.steps < 1 or args.warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and "
                          f"{args.warmup}.", culprit="--steps")
    cfg = load_config(args.config, args.overrides)
    tune_host_malloc(cfg)  # as training would, before JAX starts
    initialize(cfg.distributed)
    result = bench(cfg, steps=args.steps, warmup=args.warmup, compile_only=args.compile_only,
                   peak_tflops=args.peak_tflops)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(format_result(result))
    return 0
