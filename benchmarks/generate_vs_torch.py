"""Generation speed: jaxlm's KV-cache decoding against `transformers`' PyTorch `generate` (with its
cache) on the SAME GPT-2-shaped weights, in one run, greedy, batch 1.

A randomly initialised `GPT2LMHeadModel` is saved by transformers, imported into jaxlm with
`jaxlm.interop.hf.import_hf`, and both generate N new tokens after the same 16-token prompt. For
each N the script prints tokens/s of both, their ratio, the cost per new token (flat when the
cache works) and the marginal cost of the tokens added since the previous N. Compilation is
excluded (one warm-up call per shape); every figure is the best of --repeats runs, jaxlm and torch
interleaved so that machine noise hits both.

    .venv/bin/python benchmarks/generate_vs_torch.py                 # 6 layers, d 384
    .venv/bin/python benchmarks/generate_vs_torch.py --shape small   # GPT-2 small: 12 layers, d 768
    .venv/bin/python benchmarks/generate_vs_torch.py --cores 1       # both on one core
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"mini": dict(n_layer=6, n_embd=384, n_head=6), "small": dict(n_layer=12, n_embd=768,
                                                                      n_head=12)}


def save_random_gpt2(directory: Path, shape: str, seed: int = 0) -> None:
    """A random GPT-2 (GPT-2's vocabulary size and context) plus a placeholder tokenizer.json."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, **SHAPES[shape])
    GPT2LMHeadModel(cfg).eval().save_pretrained(directory)
    vocab = {f"<{i}>": i for i in range(cfg.vocab_size)}  # ids only: the benchmark feeds ids
    Tokenizer(models.WordLevel(vocab, unk_token="<0>")).save(str(directory / "tokenizer.json"))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="mini")
    ap.add_argument("--lengths", default="32,64,128,256,512", help="new-token counts")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=0,
                    help="pin the process (both frameworks) to the first N cores; 0: all")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.cores:  # before jax/torch start their thread pools
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))

    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax
    import torch
    from flax import nnx
    from transformers import GPT2LMHeadModel

    from jaxlm.generate import Generator
    from jaxlm.interop.hf import import_hf
    from jaxlm.params import apply_params
    from jaxlm.models import build_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_random_gpt2(d, args.shape)
        hf = GPT2LMHeadModel.from_pretrained(d).eval()
        cfg, params, _, _ = import_hf(d)
    model = build_model(cfg, "causal")
    apply_params(model, params)
    gen = Generator(model, batch_size=1)
    n_params = sum(p.numel() for p in hf.parameters())

    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_len).tolist()
    ids = torch.tensor([prompt])

    # Same weights: the logits of one forward pass agree.
    with torch.inference_mode():
        ref = hf(ids).logits[0].numpy()
    graphdef, state = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    ours = np.asarray(forward(state, np.asarray([prompt], np.int32))[0])
    logit_diff = float(np.abs(ours - ref).max())

    def run_jax(n: int) -> list[int]:
        return gen.generate_ids([prompt], max_new_tokens=n, temperature=0.0)[0]

    def run_torch(n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)
        return out[0, len(prompt):].tolist()

    print(f"GPT-2-shaped model '{args.shape}': {cfg.num_layers} layers, d {cfg.d_model}, "
          f"{cfg.num_heads} heads, vocab {cfg.vocab_size}, {n_params / 1e6:.1f}M parameters; "
          f"batch 1, prompt {args.prompt_len} tokens, greedy; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); machine load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"forward logits max |jaxlm - torch| = {logit_diff:.2e}")
    rows, prev = [], None
    for n in lengths:
        a, b = run_jax(n), run_torch(n)  # warm-up (jaxlm compiles this shape)
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        tj = tt = float("inf")
        for _ in range(args.repeats):
            tj = min(tj, best_time(lambda: run_jax(n), 1))
            tt = min(tt, best_time(lambda: run_torch(n), 1))
        row = dict(n=n, tj=tj, tt=tt, agree=agree)
        if prev is not None:
            row["mj"] = (tj - prev["tj"]) / (n - prev["n"])
            row["mt"] = (tt - prev["tt"]) / (n - prev["n"])
        rows.append(row)
        prev = row
        mj = f", marginal {1e3 * row['mj']:5.2f}" if "mj" in row else ""
        mt = f", marginal {1e3 * row['mt']:5.2f}" if "mt" in row else ""
        print(f"N={n:4d}: jaxlm {n / tj:7.1f} tok/s ({1e3 * tj / n:6.2f} ms/token{mj})   "
              f"torch {n / tt:7.1f} tok/s ({1e3 * tt / n:6.2f} ms/token{mt})   "
              f"ratio jaxlm/torch {tt / tj:5.2f}x   greedy tokens equal: {agree}/{n}", flush=True)
    total_j = sum(r["n"] for r in rows) / sum(r["tj"] for r in rows)
    total_t = sum(r["n"] for r in rows) / sum(r["tt"] for r in rows)
    per_tok = [1e3 * r["tj"] / r["n"] for r in rows]
    print(f"overall: jaxlm {total_j:.1f} tok/s, torch {total_t:.1f} tok/s, ratio "
          f"{total_j / total_t:.2f}x; jaxlm ms/token from N={lengths[0]} to N={lengths[-1]}: "
          f"{per_tok[0]:.2f} -> {per_tok[-1]:.2f} ({per_tok[-1] / per_tok[0]:.2f}x while the "
          f"output grows {lengths[-1] / lengths[0]:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
