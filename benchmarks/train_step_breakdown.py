"""Where a train step's time goes, jaxlm against PyTorch, on the model of train_step_vs_torch.py.

For each framework and precision it times three programs on the same batch: the forward pass with
the loss; forward + backward (loss and gradients); the whole step (+ gradient clipping and AdamW).
Differences give the backward pass and the optimizer's share. Each framework runs in its own
spawned process (one at a time, so neither's threads compete with the other's); every number is a
median of --reps timings of one call after a warm-up call.

    .venv/bin/python benchmarks/train_step_breakdown.py [--reps 5] [--precisions float32 bfloat16]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step_vs_torch import (MODEL, jaxlm_steps, make_batch, torch_adamw,  # noqa: E402
                                 torch_gpt2)

REPO = Path(__file__).resolve().parents[1]


def timed(fn, reps: int) -> float:
    fn()  # warm-up (and compile)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def jax_parts(dtype: str, vocab: int, reps: int) -> dict[str, float]:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)
    sys.path.insert(0, str(REPO))
    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax

    from jaxlm.sharding import use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.train.steps import train_compiler_options

    steps, state, b, cfg, mesh = jaxlm_steps(vocab, dtype)
    loss_fn = LOSSES["causal"]
    with use_mesh(mesh):
        opts = train_compiler_options(mesh)

        def loss(p, bb):
            total, aux = loss_fn(steps.layout.model(p), bb, None)  # p: plain params
            return total / aux["weight"]

        fwd = jax.jit(loss, compiler_options=opts)
        grad = jax.jit(jax.value_and_grad(loss), compiler_options=opts)
        params = state.params
        holder = {"state": state}

        def full():
            holder["state"], m = steps.train(holder["state"], b)
            jax.block_until_ready(m["loss"])

        return {"forward": timed(lambda: jax.block_until_ready(fwd(params, b)), reps),
                "forward+backward": timed(lambda: jax.block_until_ready(grad(params, b)), reps),
                "step": timed(full, reps)}


def torch_parts(dtype: str, vocab: int, reps: int) -> dict[str, float]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    toks = torch.from_numpy(make_batch(vocab)).long()
    x, y = toks[:, :-1].contiguous(), toks[:, 1:].contiguous()
    model = torch_gpt2(vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch_adamw(model)
    bf16 = dtype == "bfloat16"

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))

    def fwd():
        with torch.no_grad():
            loss()

    def grad():
        loss().backward()
        model.zero_grad(set_to_none=True)

    def full():
        loss().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"forward": timed(fwd, reps), "forward+backward": timed(grad, reps),
            "step": timed(full, reps)}


def worker(conn, fw: str, dtype: str, vocab: int, reps: int) -> None:
    conn.send((jax_parts if fw == "jaxlm" else torch_parts)(dtype, vocab, reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    tokens = MODEL["batch"] * MODEL["seq_len"]
    print(f"GPT-2 {MODEL['num_layers']} layers, d_model {MODEL['d_model']}, vocab {args.vocab}, "
          f"batch {MODEL['batch']} x {MODEL['seq_len']}; medians of {args.reps}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'precision':<10} {'framework':<7} {'forward':>9} {'backward':>9} {'clip+AdamW':>11} "
          f"{'step':>9} {'tokens/s':>9}")
    for dtype in args.precisions:
        for fw in ("jaxlm", "torch"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, fw, dtype, args.vocab, args.reps))
            proc.start()
            t = parent.recv()
            proc.join()
            fwd, bwd = t["forward"], t["forward+backward"] - t["forward"]
            opt = t["step"] - t["forward+backward"]
            print(f"{dtype:<10} {fw:<7} {fwd * 1e3:8.0f}ms {bwd * 1e3:8.0f}ms {opt * 1e3:10.0f}ms "
                  f"{t['step'] * 1e3:8.0f}ms {tokens / t['step']:9,.0f}", flush=True)


if __name__ == "__main__":
    main()
