"""The main job's float32 matmuls, alone: XLA:CPU (jax.jit) against PyTorch, on every core and on
one.

configs/shakespeare_char.yaml's step multiplies [768 tokens, d_in] activations by [d_in, d_out]
kernels (QKV 128 -> 384, MLP 128 -> 512 and 512 -> 128) three ways: the forward product, the
input gradient (by the kernel's transpose) and the weight gradient (contracting the 768 tokens).
Each product is timed alone (best of --rounds rounds of --reps calls, inputs resident), in a
child process per framework and core count (`os.sched_setaffinity` before either starts its
thread pool). Prints microseconds per product and the ratio PyTorch / jax (below 1: jax slower).

    .venv/bin/python benchmarks/matmul_shapes_vs_torch.py [--rounds 5] [--reps 200]
"""
from __future__ import annotations

import argparse
import os

from measure_child import json_child

CHILD = r"""
import json, os, sys, time
cores, framework, rounds, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
import numpy as np
SHAPES = [(128, 384), (128, 512), (512, 128)]
rng = np.random.default_rng(0)
if framework == "jax":
    import jax, jax.numpy as jnp
    fns = [jax.jit(lambda x, w: x @ w), jax.jit(lambda g, w: g @ w.T),
           jax.jit(lambda x, g: x.T @ g)]
    put, ready = jnp.asarray, jax.block_until_ready
else:
    import torch
    torch.set_num_threads(cores)
    fns = [lambda x, w: x @ w, lambda g, w: g @ w.T, lambda x, g: x.T @ g]
    put, ready = torch.from_numpy, lambda out: out
out = {}
for d_in, d_out in SHAPES:
    x = put(rng.standard_normal((768, d_in), np.float32))
    w = put(rng.standard_normal((d_in, d_out), np.float32))
    g = put(rng.standard_normal((768, d_out), np.float32))
    for kind, f, args in zip(("forward", "input grad", "weight grad"), fns,
                             ((x, w), (g, w), (x, g))):
        for _ in range(10):
            ready(f(*args))
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(reps):
                r = f(*args)
            ready(r)
            best = min(best, (time.perf_counter() - t) / reps)
        out[f"{d_in}->{d_out} {kind}"] = best * 1e6
print(json.dumps(out))
"""


def run(cores: int, framework: str, rounds: int, reps: int) -> dict[str, float]:
    """Microseconds per product for one framework on `cores` cores, from a fresh process."""
    return json_child(CHILD, str(cores), framework, str(rounds), str(reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    all_cores = len(os.sched_getaffinity(0))
    for cores in sorted({all_cores, 1}, reverse=True):
        jax_us = run(cores, "jax", args.rounds, args.reps)
        torch_us = run(cores, "torch", args.rounds, args.reps)
        print(f"\n{cores} core(s): microseconds per product, [768, d_in] x [d_in, d_out]")
        print("| product | jax | PyTorch | PyTorch / jax |")
        print("|---|---:|---:|---:|")
        for name in jax_us:
            print(f"| {name} | {jax_us[name]:.0f} | {torch_us[name]:.0f} | "
                  f"{torch_us[name] / jax_us[name]:.2f} |")
        tj, tt = sum(jax_us.values()), sum(torch_us.values())
        print(f"| all nine | {tj:.0f} | {tt:.0f} | {tt / tj:.2f} |")


if __name__ == "__main__":
    main()
