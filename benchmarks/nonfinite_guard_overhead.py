"""What the NaN/Inf guard in the train step costs: the same compiled step with and without it.

The guard (jaxlm.train.steps.train_step) checks the loss and gradient norm inside the step and
runs the optimizer update under `lax.cond`, so a non-finite step keeps the old parameters and
optimizer state; it adds no host sync. The baseline is the same step with `guard_nonfinite=False`.
Both run in this process, alternated A B B A for --rounds rounds of --steps steps; the script
prints the median step times and their ratio.

--shape optimizer (default): the worst case for the guard, a step dominated by the optimizer
update (2 layers, d_model 512, vocabulary 32000 = 19M parameters, one row of 8 tokens).
--shape gpt: the 13.8M-parameter GPT-2 of benchmarks/train_step_vs_torch.py (6 layers,
d_model 384, context 256, vocabulary 8000, batch 8), where the forward/backward dominates.

    .venv/bin/python benchmarks/nonfinite_guard_overhead.py [--shape optimizer|gpt] [--rounds 6]
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from jaxlm.host_memory import reuse_freed_host_memory

SHAPES = {"optimizer": dict(vocab=32000, layers=2, d=512, heads=8, seq=8, batch=1),
          "gpt": dict(vocab=8000, layers=6, d=384, heads=6, seq=256, batch=8)}


def build(shape: dict, guard: bool):
    from flax import nnx

    from jaxlm.config import ModelConfig, OptimConfig
    from jaxlm.models import build_model
    from jaxlm.tasks import token_loss
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import train_step

    mcfg = ModelConfig(family="gpt2", vocab_size=shape["vocab"], num_layers=shape["layers"],
                       d_model=shape["d"], num_heads=shape["heads"],
                       max_len=shape["seq"]).resolved()
    tx, lr = build_optimizer(OptimConfig(lr=1e-3, weight_decay=0.1), 1000)
    graphdef, params = nnx.split(build_model(mcfg), nnx.Param)
    state = {"params": params, "opt_state": tx.init(params), "step": jax.numpy.zeros((), "int32"),
             "rng": jax.random.key_data(jax.random.key(0)),
             "nonfinite": {"count": jax.numpy.zeros((), "int32"),
                           "last_step": jax.numpy.full((), -1, "int32")}}
    step = jax.jit(lambda s, b: train_step(s, b, graphdef=graphdef, tx=tx, loss_fn=token_loss,
                                           lr_schedule=lr, guard_nonfinite=guard),
                   donate_argnums=(0,))
    return step, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="optimizer")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    reuse_freed_host_memory()  # before JAX starts its backend threads (jaxlm.host_memory)
    shape = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, shape["vocab"], (shape["batch"], shape["seq"] + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "weights": np.ones((shape["batch"], shape["seq"]), np.float32)}
    runs = {}
    for guard in (True, False):
        step, state = build(shape, guard)
        state, m = step(state, batch)  # compile
        jax.block_until_ready(m)
        runs[guard] = [step, state, []]
    for _ in range(args.rounds):
        for guard in (True, False, False, True):
            step, state, times = runs[guard]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, m = step(state, batch)
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / args.steps)
            runs[guard][1] = state
    with_guard = statistics.median(runs[True][2])
    without = statistics.median(runs[False][2])
    print(f"shape {args.shape}: median of {len(runs[True][2])} x {args.steps} steps each")
    print(f"step with the NaN/Inf guard:  {with_guard * 1e3:8.1f} ms")
    print(f"step without it (baseline):   {without * 1e3:8.1f} ms")
    print(f"ratio guarded / baseline:     {with_guard / without:8.3f}")


if __name__ == "__main__":
    main()
