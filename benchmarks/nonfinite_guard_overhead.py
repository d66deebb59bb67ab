"""What the NaN/Inf guard in the train step costs: the same compiled step with and without it.

The guard (jaxlm.train.steps.train_step) checks the loss and gradient norm inside the step and
runs the optimizer update under `lax.cond`, so a non-finite step keeps the old parameters and
optimizer state; it adds no host sync. The baseline (`unguarded_step` here) is the same step built
from the same helpers (`accumulate_gradients`, then a plain optax update), compiled by the same
`compile_steps(..., step_fn=...)`.
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


def unguarded_step(state, batch, *, layout, tx, loss_fn, lr_schedule, grad_accum=1,
                   dropout=False):
    """`jaxlm.train.steps.train_step` without the NaN/Inf guard: the same gradients, norm and
    metrics (the library's `mean_gradients` / `step_metrics`), then a plain optax update, always
    applied."""
    import optax

    from jaxlm.train.steps import mean_gradients, step_metrics

    total, aux, grads, weight = mean_gradients(state, batch, layout=layout, loss_fn=loss_fn,
                                               grad_accum=grad_accum, dropout=dropout)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                        step=state.step + 1)
    return new, step_metrics(new, total, aux, weight, optax.tree.norm(grads),
                             lr_schedule(state.step))


def build(shape: dict, guard: bool, mesh):
    """(jitted step, initial state, batch sharding): `compile_steps` with the library's
    `train_step` (guarded) or `unguarded_step`."""
    from jaxlm.config import ModelConfig, OptimConfig
    from jaxlm.models import build_model
    from jaxlm.tasks import token_loss
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import compile_steps, train_step

    mcfg = ModelConfig(family="gpt2", vocab_size=shape["vocab"], num_layers=shape["layers"],
                       d_model=shape["d"], num_heads=shape["heads"],
                       max_len=shape["seq"]).resolved()
    tx, lr = build_optimizer(OptimConfig(lr=1e-3, weight_decay=0.1), 1000)
    steps = compile_steps(lambda: build_model(mcfg), tx, token_loss, lr, mesh,
                          step_fn=train_step if guard else unguarded_step)
    return steps.train, steps.init(), steps.batch_sharding


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
    from jaxlm.sharding import make_mesh, put_batch, use_mesh

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    runs = {}
    with use_mesh(mesh):
        for guard in (True, False):
            step, state, sharding = build(shape, guard, mesh)
            placed = put_batch(batch, sharding)
            state, m = step(state, placed)  # compile
            jax.block_until_ready(m)
            runs[guard] = [step, state, [], placed]
    for _ in range(args.rounds):
        for guard in (True, False, False, True):
            step, state, times, placed = runs[guard]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, m = step(state, placed)
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
