"""Is the input pipeline the bottleneck? Tokens/s of the grain pipeline alone against the jitted
train step's tokens/s, for one config, in one run.

    python benchmarks/pipeline_vs_step.py [--config configs/shakespeare_char.yaml]
           [--batches 2000] [--steps 200] [--set KEY=VALUE ...]

The pipeline is the one `jaxlm pretrain` builds for the config (same sources, tokenizer, sampling,
prefetch); it is timed by pulling host batches as fast as possible (after the one-off
tokenization, reported separately), with the CPU time it takes per batch (every thread of the
process: what a training run's pipeline takes from the cores its step runs on). The train step
is timed on device-resident batches taken from that pipeline, so it measures compute alone. Also
measured: the packed-documents pipeline (the same corpus cut into blank-line documents, packed
with grain), for comparison. Prints the ratio; the pipeline should be >= 10x faster than the step.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, every thread (grain's prefetch too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_pipeline(batches, n: int) -> tuple[float, int, float]:
    """(tokens/s, tokens per batch, CPU milliseconds per batch): the CPU time is what a training
    run's pipeline takes from the cores the step runs on."""
    it = iter(batches)
    first = next(it)  # thread start-up and the first fill of the prefetch buffer
    tokens_per_batch = int(first["inputs"].size)
    t, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(n):
        next(it)
    cpu_ms = (cpu_seconds() - cpu) / n * 1e3
    return n * tokens_per_batch / (time.perf_counter() - t), tokens_per_batch, cpu_ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/shakespeare_char.yaml"))
    ap.add_argument("--batches", type=int, default=2000, help="pipeline batches to time")
    ap.add_argument("--steps", type=int, default=200, help="train steps to time")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax

    from jaxlm.config import load_config
    from jaxlm.data.lm_data import lm_train_batches, load_lm_sources, tokenizer_texts
    from jaxlm.data.sources import parse_spec
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.fit import model_config
    from jaxlm.train.steps import compile_steps, put_batch

    os.chdir(REPO)
    cfg = load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    train, _ = load_lm_sources(cfg)
    k = cfg.data.tokenizer
    tok = TextTokenizer(train_tokenizer(tokenizer_texts(train), k.kind, k.vocab_size))
    data = lm_train_batches(cfg, tok, train)
    setup_s = time.perf_counter() - t0
    pipe_tps, tpb, pipe_cpu_ms = time_pipeline(data, min(args.batches, cfg.train.steps - 1))

    # The same corpus as documents (blank-line blocks), packed: the pipeline for real corpora.
    spec = parse_spec(cfg.resolve_path(cfg.data.train))
    packed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train=f"{spec.kind}:{spec.target}?documents=blank_line", sampling="packed"))
    ptrain, _ = load_lm_sources(packed_cfg)
    packed_tps, _, packed_cpu_ms = time_pipeline(lm_train_batches(packed_cfg, tok, ptrain),
                                                 args.batches)

    mcfg = model_config(cfg, tok, None)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                     num_devices=cfg.mesh.num_devices)
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    with use_mesh(mesh, cfg.mesh.rules):
        steps = compile_steps(lambda: build_model(mcfg, cfg.train.task, seed=0), tx,
                              LOSSES[cfg.train.task], lr, mesh,
                              grad_accum=cfg.train.grad_accum, dropout=mcfg.dropout > 0,
                              rules=cfg.mesh.rules)
        it = iter(data)
        device_batches = [put_batch(next(it), steps.batch_sharding) for _ in range(16)]
        state = steps.init()
        for b in device_batches[:3]:  # compile and warm up
            state, m = steps.train(state, b)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for i in range(args.steps):
            state, m = steps.train(state, device_batches[i % len(device_batches)])
        jax.block_until_ready(m)
        step_tps = args.steps * tpb / (time.perf_counter() - t)

    ratio = pipe_tps / step_tps
    print(f"config {args.config}: sampling={cfg.data.sampling}, task={cfg.train.task}, "
          f"batch {cfg.train.batch_size} x seq {cfg.data.seq_len}, {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs")
    print(f"one-off data setup (read, train tokenizer, tokenize): {setup_s:.2f} s")
    print(f"input pipeline ({cfg.data.sampling}):      {pipe_tps:12,.0f} tokens/s, "
          f"CPU {pipe_cpu_ms:.2f} ms per batch")
    print(f"input pipeline (packed documents):  {packed_tps:12,.0f} tokens/s, "
          f"CPU {packed_cpu_ms:.2f} ms per batch")
    print(f"train step:                         {step_tps:12,.0f} tokens/s")
    print(f"ratio pipeline / train step: {ratio:.1f}x (packed: {packed_tps / step_tps:.1f}x); "
          f"target >= 10x: {'OK' if ratio >= 10 else 'NOT MET'}")
    return 0 if ratio >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
