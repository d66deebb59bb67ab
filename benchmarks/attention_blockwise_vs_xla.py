"""Causal self-attention forward + backward: jaxlm's blockwise implementation (the CPU default)
against `jax.nn.dot_product_attention(implementation="xla")`, same inputs, same process, alternating.

Shape of one layer of train_step_vs_torch.py's GPT by default (batch 8, 256 tokens, 6 heads of 64).

    .venv/bin/python benchmarks/attention_blockwise_vs_xla.py [--seq 256] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.models.attention import attend

    shape = (args.batch, args.seq, args.heads, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal(shape), args.dtype) for _ in range(4))

    def fwd_bwd(impl: str):
        def loss(q, k, v):
            out = attend(q, k, v, mask_Bx1xTxS=None, causal=True, segment_ids_BxT=None, impl=impl)
            return jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    fns = {impl: fwd_bwd(impl) for impl in ("xla", "blockwise")}
    grads = {impl: jax.block_until_ready(f(q, k, v)) for impl, f in fns.items()}
    times = {impl: [] for impl in fns}
    for _ in range(args.reps):
        for impl, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(q, k, v))
            times[impl].append(time.perf_counter() - t0)
    diff = max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
               for a, b in zip(grads["xla"], grads["blockwise"]))
    med = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
    print(f"causal attention fwd+bwd, {args.dtype}, [B, T, H, K] = {list(shape)}: "
          f"xla {med['xla']:.2f} ms, blockwise {med['blockwise']:.2f} ms: "
          f"{med['xla'] / med['blockwise']:.2f}x (medians of {args.reps}, alternating); "
          f"largest gradient difference {diff:.3g}")


if __name__ == "__main__":
    main()
