"""What a cold `jaxlm pretrain` pays around its train steps, piece by piece, for one config.

Measured in this process, from an empty compilation cache (a script does not turn jaxlm's
persistent cache on), in the order a run meets them:
- importing what `jaxlm pretrain` imports (a fresh interpreter, timed from its first line);
- the init program: compiled, then run (the fresh train state);
- the train step: lowered and compiled for the config's batch shape;
- the eval step: its first call through the run's evaluator (compiling it, then one batch), as
  the first validation meets it;
- scoring the whole validation split once (its batches, on the real corpus, with the fresh
  parameters: the cost does not depend on their values), as the run's final report does;
- the exit: from the end of a fresh interpreter's work to its exit, with Python's teardown
  and as the `jaxlm` program exits without it (`jaxlm.cli.program`).
Also, for scale, the steady train step (per step, median over calls of train.steps_per_call steps
as `jaxlm pretrain` makes them, about --steps steps), so each piece reads as a number of
steps. PyTorch's eager mode compiles nothing; nanoGPT's protocol does not time a whole-split
validation (benchmarks/headline.py compares the whole jobs).

    .venv/bin/python benchmarks/startup_costs.py [--config configs/shakespeare_char.yaml]
           [--steps 50] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMPORTS = "import jaxlm.distributed, jaxlm.train.pretrain"


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what `jaxlm pretrain` imports."""
    code = f"import time; t = time.perf_counter(); {IMPORTS}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


EXIT_CHILD = """
import sys, time
{imports}
import jax, jax.numpy as jnp
jax.block_until_ready(jax.jit(lambda x: x @ x)(jnp.ones((64, 64))))
print(time.time(), flush=True)
if sys.argv[1] == "program":  # as the jaxlm program ends
    from jaxlm.cli import exit_without_teardown
    exit_without_teardown(0)
"""


def exit_seconds(how: str, rounds: int = 3) -> float:
    """Median seconds from the end of a fresh interpreter's work (jaxlm imported, the CPU
    backend up, a program compiled and run) to its exit: `interpreter` exits as Python does,
    `program` as the `jaxlm` program does (`jaxlm.cli.exit_without_teardown`)."""
    out = []
    for _ in range(rounds):
        proc = subprocess.run([sys.executable, "-c", EXIT_CHILD.format(imports=IMPORTS), how],
                              capture_output=True, text=True, check=True, cwd=REPO)
        out.append(time.time() - float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs/shakespeare_char.yaml"))
    ap.add_argument("--steps", type=int, default=50, help="steady steps timed, for scale")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    imports_s = import_seconds()
    teardown = {how: exit_seconds(how) for how in ("interpreter", "program")}

    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory(one_arena=False)  # as the `jaxlm` command sets it for this job
    import jax
    import numpy as np

    from jaxlm.compile_cache import cache_dir
    from jaxlm.config import load_config
    from jaxlm.data.lm_data import lm_eval_batches, load_lm_sources, tokenizer_texts
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
    from jaxlm.sharding import put_batch, use_mesh
    from jaxlm.train.bench import (bench_steps_per_call, build_steps, lower_and_compile,
                                   random_lm_batch)
    from jaxlm.train.trainer import stack_batches

    cfg = load_config(args.config, args.overrides)
    train, val = load_lm_sources(cfg)
    k = cfg.data.tokenizer
    tok = TextTokenizer(train_tokenizer(tokenizer_texts(train), k.kind, k.vocab_size))
    cfg.model.vocab_size = cfg.model.vocab_size or tok.vocab_size
    val_batches = lm_eval_batches(cfg, tok, val, max_batches=0)
    steps, _, mesh = build_steps(cfg)
    with use_mesh(mesh, cfg.mesh.rules):
        t0 = time.perf_counter()
        init = steps.init.lower().compile()
        t1 = time.perf_counter()
        state = jax.block_until_ready(init())
        t2 = time.perf_counter()
        per_call = bench_steps_per_call(cfg)  # the program jaxlm pretrain runs
        train_step = lower_and_compile(cfg, steps, mesh, per_call)
        t3 = time.perf_counter()
        steps.eval.mean_metrics(state.params, val_batches[:1])
        t4 = time.perf_counter()
        host = random_lm_batch(cfg, cfg.model.vocab_size)
        args_ = ((put_batch(stack_batches([host] * per_call, per_call), steps.stacked_sharding),
                  np.int32(per_call)) if per_call > 1 else
                 (put_batch(host, steps.batch_sharding),))
        times = []
        for _ in range(-(-args.steps // per_call) + 2):
            s0 = time.perf_counter()
            state, metrics = train_step(state, *args_)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - s0) / per_call)
        step_s = statistics.median(times[2:])
        t5 = time.perf_counter()
        steps.eval.mean_metrics(state.params, val_batches)
        whole_s = time.perf_counter() - t5

    rows = [("imports (fresh interpreter)", imports_s),
            ("init program: compile", t1 - t0), ("init program: run", t2 - t1),
            (f"train step ({per_call} per call): lower + compile", t3 - t2),
            ("eval step: compile + first batch", t4 - t3),
            (f"whole validation split ({len(val_batches)} batches)", whole_s)]
    print(f"config {args.config}; compilation cache: none here (the `jaxlm` command keeps one "
          f"in {cache_dir()} for reruns)")
    print(f"steady train step: {step_s * 1e3:.1f} ms (median over calls of {per_call} steps)")
    for name, s in rows:
        print(f"  {name:45s} {s:6.2f} s  = {s / step_s:6.1f} steps")
    total = sum(s for _, s in rows)
    print(f"  {'total':45s} {total:6.2f} s  = {total / step_s:6.1f} steps")
    print(f"exit after the work: {teardown['interpreter']:.2f} s with the interpreter's "
          f"teardown, {teardown['program']:.2f} s as the `jaxlm` program exits (no teardown)")


if __name__ == "__main__":
    main()
