"""Host time of one train step's dispatch: the train state as plain arrays (jaxlm's TrainState)
against the same step over the nnx layout (a dict of nnx States of Variables, what jaxlm 0.1.0
passed to every step), on benchmarks/train_step_vs_torch.py's 13.8M GPT-2, in one run.

Dispatch time is how long `steps.train(state, batch)` takes to return with the device idle
(the step is then queued; it runs asynchronously): jit flattens its arguments and unflattens its
results on the host, in C++ for dicts and arrays, in Python for every nnx Variable. The two steps
compute the same thing; the script checks that their losses agree, then prints the median and
minimum dispatch times over --calls calls, alternating the two, and their ratio.

    .venv/bin/python benchmarks/step_dispatch.py [--calls 30] [--dtype float32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def nnx_layout_step(steps):
    """The same train step, taking and returning the state in the nnx layout."""
    import jax

    from jaxlm.train.steps import train_compiler_options

    inner = steps.train
    layout = steps.layout
    mesh = steps.batch_sharding.mesh
    shardings = layout.to_checkpoint(steps.state_sharding)

    def step(tree, batch):
        state, metrics = inner.__wrapped__(layout.from_checkpoint(tree), batch)
        return layout.to_checkpoint(state), metrics

    return jax.jit(step, in_shardings=(shardings, steps.batch_sharding),
                   out_shardings=(shardings, None), donate_argnums=(0,),
                   compiler_options=train_compiler_options(mesh))


def dispatch_ms(fn, state, batch) -> tuple[float, object, float]:
    """(host ms until `fn` returned, new state, loss), with the device idle beforehand."""
    import jax

    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state, metrics = fn(state, batch)
    ms = (time.perf_counter() - t0) * 1e3
    return ms, state, float(jax.block_until_ready(metrics)["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args()
    from train_step_vs_torch import jaxlm_steps

    import jax

    steps, state, batch, _, _ = jaxlm_steps(8000, args.dtype)
    old_fn = nnx_layout_step(steps)
    old_state = steps.layout.to_checkpoint(steps.init())
    for _ in range(2):  # compile and settle both
        _, state, new_loss = dispatch_ms(steps.train, state, batch)
        _, old_state, old_loss = dispatch_ms(old_fn, old_state, batch)
    assert abs(new_loss - old_loss) <= 1e-5 * max(1.0, abs(old_loss)), (new_loss, old_loss)
    times: dict[str, list[float]] = {"plain TrainState": [], "nnx layout (0.1.0)": []}
    for _ in range(args.calls):
        ms, state, _ = dispatch_ms(steps.train, state, batch)
        times["plain TrainState"].append(ms)
        ms, old_state, _ = dispatch_ms(old_fn, old_state, batch)
        times["nnx layout (0.1.0)"].append(ms)
    leaves = len(jax.tree.leaves(state))
    print(f"train-step dispatch, 13.8M GPT-2, {args.dtype}, {leaves} state arrays, "
          f"{args.calls} calls each (alternating)")
    for name, ts in times.items():
        print(f"  {name:20s} median {statistics.median(ts):6.2f} ms   min {min(ts):6.2f} ms")
    ratio = statistics.median(times["nnx layout (0.1.0)"]) / statistics.median(
        times["plain TrainState"])
    print(f"  nnx layout / plain: {ratio:.1f}x")


if __name__ == "__main__":
    main()
