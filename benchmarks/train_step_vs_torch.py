"""Train-step speed: jaxlm against PyTorch `transformers` GPT-2 on the same model, batch and
optimizer, in one run, at matched precision.

The model is a 13.8M-parameter GPT-2 (6 layers, 6 heads, d_model 384, context 256, vocabulary
8000, tied embeddings, biases, tanh GELU); the batch is 8 rows of 256 tokens; the optimizer is
AdamW (b2 0.99, weight decay 0.1 on matrices but not embeddings, gradient clipping at 1.0), as in
nanoGPT. One step is forward + backward + clip + AdamW update.

- jaxlm: the library path (`config_from_dict` -> `build_optimizer` -> `compile_steps` with the
  causal-LM loss), float32 (`model.dtype: float32`) or bf16 mixed precision
  (`model.dtype: bfloat16`: float32 parameters and optimizer state, bf16 matmul inputs with
  float32 accumulation, float32 norms/softmax/loss).
- PyTorch: `transformers.GPT2LMHeadModel` (SDPA attention) with `torch.optim.AdamW` (fused),
  eager, float32 or under `torch.autocast("cpu", torch.bfloat16)`.

Host memory: the jaxlm worker calls `jaxlm.reuse_freed_host_memory()`, which switches glibc malloc to one arena that keeps freed memory
(`jaxlm.host_memory`: XLA:CPU's per-step buffer is then reused instead of page-faulted in again
every step). PyTorch runs with glibc's defaults, its faster setting here (`--torch-malloc jaxlm`
gives it the same settings, to check).

Each framework runs in its own worker process (so neither's thread pools spin while the other
works); after --warmup-rounds unmeasured rounds (both frameworks: allocators and caches settle;
jaxlm's heap grows over its first steps), the parent alternates them (A B B A ...) for --rounds
rounds of --steps steps and prints
medians, the jaxlm/torch ratio, and MFU against the matmul peak measured (in every round, jax) for
the dtype used. Both frameworks use every core (torch.set_num_threads(cores); XLA's CPU client
uses one intra-op thread per core).

    .venv/bin/python benchmarks/train_step_vs_torch.py [--rounds 7] [--steps 3] [--warmup-rounds 1]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = dict(num_layers=6, num_heads=6, d_model=384, seq_len=256, batch=8)
PRECISIONS = ("float32", "bfloat16")


def jaxlm_config(vocab: int, dtype: str, attention_impl: str = "auto") -> dict:
    """The jaxlm config of the benchmarked model and optimizer (`config_from_dict` input)."""
    return {"model": dict(family="gpt2", num_layers=MODEL["num_layers"],
                          num_heads=MODEL["num_heads"], d_model=MODEL["d_model"],
                          max_len=MODEL["seq_len"], vocab_size=vocab, dtype=dtype,
                          attention_impl=attention_impl),
            "data": dict(seq_len=MODEL["seq_len"]),
            "optim": dict(name="adamw", lr=1e-3, b1=0.9, b2=0.99, weight_decay=0.1,
                          grad_clip=1.0, warmup_steps=0, schedule="constant"),
            "train": dict(batch_size=MODEL["batch"], steps=1000)}


def torch_gpt2(vocab: int):
    """`transformers`' GPT-2 of the same shape, in training mode, without dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=MODEL["seq_len"], n_embd=MODEL["d_model"],
                     n_layer=MODEL["num_layers"], n_head=MODEL["num_heads"],
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", tie_word_embeddings=True,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).train()


def torch_adamw(model, impl: str = "fused"):
    """AdamW as jaxlm's: weight decay on matrices, not on embeddings, biases or norms."""
    import torch

    def decays(name: str, p) -> bool:
        return p.dim() >= 2 and "wte" not in name and "wpe" not in name

    named = list(model.named_parameters())
    kw = {"fused": True} if impl == "fused" else {"foreach": True}
    return torch.optim.AdamW([{"params": [p for n, p in named if decays(n, p)], "weight_decay": 0.1},
                              {"params": [p for n, p in named if not decays(n, p)],
                               "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.99), eps=1e-8, **kw)


def make_batch(vocab: int, seed: int = 0):
    import numpy as np

    toks = np.random.default_rng(seed).integers(0, vocab, (MODEL["batch"], MODEL["seq_len"] + 1))
    return toks.astype(np.int32)


def jaxlm_steps(vocab: int, dtype: str, attention_impl: str = "auto"):
    """The benchmarked model's jitted jaxlm steps on one CPU device, initialised, and the
    benchmark batch placed for them: (steps, state, batch, config, mesh). Callers apply
    `jaxlm.host_memory` first (before JAX starts its backend), as `jax_worker` does."""
    import numpy as np

    from jaxlm.config import config_from_dict
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import compile_steps, put_batch

    toks = make_batch(vocab)
    host_batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:],
                  "weights": np.ones(toks[:, 1:].shape, np.float32)}
    cfg = config_from_dict(jaxlm_config(vocab, dtype, attention_impl))
    mesh = make_mesh(num_devices=1)
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(cfg.model.resolved(), "causal", seed=0), tx,
                              LOSSES["causal"], lr, mesh)
        state = steps.init()
        batch = put_batch(host_batch, steps.batch_sharding)
    return steps, state, batch, cfg, mesh


# ------------------------------------------------------------------------------------------ jax


def jax_worker(conn, vocab: int) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)  # one CPU device using every core
    sys.path.insert(0, str(REPO))
    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax

    from jaxlm.host_memory import applied
    from jaxlm.train.flops import count_params, flops_per_token, measure_peak_flops

    runs, info = {}, {}
    for dtype in PRECISIONS:
        steps, state, b, cfg, _ = jaxlm_steps(vocab, dtype)
        t0 = time.perf_counter()
        state, m = steps.train(state, b)
        first_loss = float(m["loss"])
        info[dtype] = {"compile_s": time.perf_counter() - t0, "first_loss": first_loss,
                       "params": count_params(state.params),
                       "flops_per_token": flops_per_token(cfg.model.resolved(), MODEL["seq_len"])}
        runs[dtype] = [steps.train, state, b]
    conn.send({"devices": jax.device_count(), "info": info,
               "malloc": "reuse" if applied() else "system"})
    while True:
        msg = conn.recv()
        if msg is None:
            return
        kind, dtype, n = msg
        if kind == "peak":
            conn.send(measure_peak_flops(dtype))
            continue
        train, state, b = runs[dtype]
        t0 = time.perf_counter()
        for _ in range(n):
            state, m = train(state, b)
        loss = float(m["loss"])  # blocks
        runs[dtype][1] = state
        conn.send((time.perf_counter() - t0, loss))


def baseline_worker(conn, vocab: int, tree: str) -> None:
    """`jax_worker` of another jaxlm source tree (e.g. `git worktree add /tmp/base v0.1.0`), run
    from that tree's own copy of this script, so the two versions alternate in one run."""
    import importlib.util

    path = Path(tree).resolve() / "benchmarks" / "train_step_vs_torch.py"
    spec = importlib.util.spec_from_file_location("baseline_train_step_vs_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.jax_worker(conn, vocab)


# ---------------------------------------------------------------------------------------- torch


def torch_worker(conn, vocab: int, optimizer_impl: str, malloc: str) -> None:
    if malloc == "jaxlm":  # before torch starts its threads
        os.environ["JAX_PLATFORMS"] = "cpu"
        sys.path.insert(0, str(REPO))
        from jaxlm.host_memory import reuse_freed_host_memory
        malloc = "reuse" if reuse_freed_host_memory() else "system"
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    toks = torch.from_numpy(make_batch(vocab)).long()
    x, y = toks[:, :-1].contiguous(), toks[:, 1:].contiguous()
    runs, info = {}, {}
    for dtype in PRECISIONS:
        model = torch_gpt2(vocab)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch_adamw(model, optimizer_impl)
        use_bf16 = dtype == "bfloat16"

        def step(model=model, opt=opt, params=params, use_bf16=use_bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t0 = time.perf_counter()
        loss = step()
        info[dtype] = {"compile_s": time.perf_counter() - t0, "first_loss": loss.item(),
                       "params": sum(p.numel() for p in params),
                       "attn": model.config._attn_implementation}
        runs[dtype] = step
    conn.send({"threads": torch.get_num_threads(), "info": info, "malloc": malloc})
    while True:
        msg = conn.recv()
        if msg is None:
            return
        _, dtype, n = msg
        t0 = time.perf_counter()
        for _ in range(n):
            loss = runs[dtype]()
        conn.send((time.perf_counter() - t0, loss.item()))


# --------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1,
                    help="rounds run first, the same way, and not counted")
    ap.add_argument("--steps", type=int, default=3, help="train steps per measurement")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--torch-optimizer", choices=("fused", "foreach"), default="fused")
    ap.add_argument("--torch-malloc", choices=("system", "jaxlm"), default="system",
                    help="glibc malloc settings of the PyTorch worker: its defaults, or jaxlm's")
    ap.add_argument("--baseline", metavar="TREE",
                    help="another jaxlm source tree to time in the same rounds (a regression "
                         "check: prints this tree's jaxlm against it)")
    args = ap.parse_args(argv)

    ctx = mp.get_context("spawn")
    workers = {}
    specs = [("jaxlm", jax_worker, ()),
             ("torch", torch_worker, (args.torch_optimizer, args.torch_malloc))]
    if args.baseline:
        specs.append(("baseline", baseline_worker, (args.baseline,)))
    for name, target, extra in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, args.vocab, *extra), daemon=True)
        proc.start()
        workers[name] = (parent, proc)
    hello = {name: conn.recv() for name, (conn, _) in workers.items()}  # both built and warm
    ji, ti = hello["jaxlm"]["info"], hello["torch"]["info"]
    T, B = MODEL["seq_len"], MODEL["batch"]
    print(f"model: GPT-2 {MODEL['num_layers']} layers, {MODEL['num_heads']} heads, d_model "
          f"{MODEL['d_model']}, vocab {args.vocab}, seq {T}, batch {B}: "
          f"{ji['float32']['params'] / 1e6:.2f}M parameters in jaxlm, "
          f"{ti['float32']['params'] / 1e6:.2f}M in torch")
    print(f"cores: {os.cpu_count()}; jax devices {hello['jaxlm']['devices']}; torch threads "
          f"{hello['torch']['threads']} (attention: {ti['float32']['attn']}, AdamW "
          f"{args.torch_optimizer}); host malloc: jaxlm {hello['jaxlm']['malloc']}, torch "
          f"{hello['torch']['malloc']}; load average at start {os.getloadavg()[0]:.2f}")
    for dtype in PRECISIONS:
        print(f"  {dtype}: first loss jaxlm {ji[dtype]['first_loss']:.4f} torch "
              f"{ti[dtype]['first_loss']:.4f} (ln V = {__import__('math').log(args.vocab):.4f}); "
              f"first step (compile) jaxlm {ji[dtype]['compile_s']:.1f}s torch "
              f"{ti[dtype]['compile_s']:.1f}s")

    def ask(name: str, msg):
        conn = workers[name][0]
        conn.send(msg)
        return conn.recv()

    times = {(fw, d): [] for fw in workers for d in PRECISIONS}
    peaks = {d: [] for d in PRECISIONS}
    for _ in range(args.warmup_rounds):
        for dtype in PRECISIONS:
            for fw in workers:
                ask(fw, ("run", dtype, args.steps))
    print(f"{args.warmup_rounds} warm-up round(s) done, not counted", flush=True)
    for r in range(args.rounds):
        order = tuple(workers) if r % 2 == 0 else tuple(reversed(workers))
        for dtype in PRECISIONS:
            peaks[dtype].append(ask("jaxlm", ("peak", dtype, 0)))
            for fw in order:
                dt, _ = ask(fw, ("run", dtype, args.steps))
                times[(fw, dtype)].append(dt / args.steps)
        line = "  ".join(f"{fw[0]}/{d[:4]} {B * T / times[(fw, d)][-1]:6.0f}"
                         for d in PRECISIONS for fw in workers)
        print(f"round {r + 1}/{args.rounds} tokens/s: {line}  (load {os.getloadavg()[0]:.2f})",
              flush=True)
    for conn, proc in workers.values():
        conn.send(None)
        proc.join(timeout=30)

    print()
    print(f"{'precision':<10} {'jaxlm tok/s':>12} {'torch tok/s':>12} {'ratio':>7} "
          f"{'jaxlm MFU':>10} {'torch MFU':>10} {'peak GFLOP/s':>13}")
    for dtype in PRECISIONS:
        tj = B * T / statistics.median(times[("jaxlm", dtype)])
        tt = B * T / statistics.median(times[("torch", dtype)])
        peak = statistics.median(peaks[dtype])
        fpt = ji[dtype]["flops_per_token"]
        label = "float32" if dtype == "float32" else "bf16"
        print(f"{label:<10} {tj:12,.0f} {tt:12,.0f} {tj / tt:7.2f} {tj * fpt / peak:10.1%} "
              f"{tt * fpt / peak:10.1%} {peak / 1e9:13.0f}")
    if args.baseline:
        for dtype in PRECISIONS:
            tj = B * T / statistics.median(times[("jaxlm", dtype)])
            tb = B * T / statistics.median(times[("baseline", dtype)])
            tt = B * T / statistics.median(times[("torch", dtype)])
            print(f"{dtype}: baseline {args.baseline} {tb:,.0f} tok/s (vs torch {tb / tt:.2f}); "
                  f"this tree / baseline {tj / tb:.3f}")
    print(f"(medians of {args.rounds} alternating rounds x {args.steps} steps after "
          f"{args.warmup_rounds} warm-up round(s); MFU = "
          f"{ji['float32']['flops_per_token'] / 1e6:.1f} MFLOP/token x tokens/s / the measured "
          f"matmul peak of the dtype: float32 for float32, bf16 inputs with float32 accumulation "
          f"for bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
