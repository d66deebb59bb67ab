"""The peer of the README's main job: what a user runs instead of `jaxlm pretrain --config
configs/shakespeare_char.yaml`, i.e. nanoGPT's `train.py` with its shakespeare_char config and

    python data/shakespeare_char/prepare.py
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
        --lr_decay_iters=2000 --dropout=0.0

written out here (nanoGPT's protocol, our code) so that benchmarks/headline.py can time it whole on
a machine without nanoGPT or network access. What it does, in nanoGPT's order:
- prepare: character vocabulary of the whole file, first 90% / last 10% written as uint16
  train.bin / val.bin (+ meta.pkl); done in this process and timed with the job, so the peer pays
  for its tokenisation as jaxlm does;
- the model of nanoGPT's model.py (bias=False, exact GELU, SDPA causal attention, tied embeddings,
  normal(0.02) init with residual projections at 0.02/sqrt(2 * n_layer));
- the loop of train.py: iter 0..max_iters inclusive; each iter sets get_lr(iter), runs
  estimate_loss() on train AND val (eval_iters random batches each) when iter % eval_interval == 0,
  saves ckpt.pt (model, optimizer, model_args, iter_num, best_val_loss, config) when val improves
  (always_save_checkpoint False) and iter > 0; then forward, the next batch fetched from a fresh
  np.memmap, backward, clip 1.0, AdamW step (torch's default implementation on CPU: train.py asks
  for fused only on CUDA), and a log line with loss.item() every log_interval iters.

Same seed (1337), same random stream: the losses it prints match nanoGPT's train.py to the last
printed digit (checked against nanoGPT 3adf61e on CPU, iters 0-6 with evaluations).

`job_s` is the wall time from process start to the end of the loop: the harness puts the time of
the spawn in $HEADLINE_SPAWN_TIME (seconds since the epoch), so interpreter start-up and imports
count; without it the clock starts at this module's first line. Then, outside the timed part, the
final model is scored on the whole validation split (every token once, non-overlapping
block_size windows: the figure `jaxlm pretrain` reports), and a JSON report is written.

    .venv/bin/python benchmarks/nanogpt_reference.py [--max_iters=2000 ...] [--out_dir DIR]
"""
from __future__ import annotations

import time

T_MODULE = time.time()  # the clock's fallback start: as early as the script can take it

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SPAWN_ENV = "HEADLINE_SPAWN_TIME"


# ------------------------------------------------------------------------------------ the model


class Block(nn.Module):
    """nanoGPT's block: pre-LayerNorm causal self-attention and a 4x GELU MLP."""

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.c_proj(a.transpose(1, 2).contiguous().view(B, T, C)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class GPT(nn.Module):
    """nanoGPT's GPT: token + learned position embeddings, blocks, final LayerNorm, tied head.

    The modules are created and initialised in model.py's order (an lm_head Linear whose weight
    the token embedding shares, init applied children first), so that with the same seed the
    random stream, and therefore the initial weights and the batches drawn after them, are
    nanoGPT's own."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 bias: bool, dropout: float) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied

        def init(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

        self.apply(init)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "mlp_proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# ---------------------------------------------------------------------------------- the recipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """nanoGPT's knobs under its own names (`--n_layer=4` works as in its configurator); the
    defaults are config/train_shakespeare_char.py with the README job's command-line overrides."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flag = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
    for name, kind, default in (
            ("eval_interval", int, 250), ("log_interval", int, 10), ("eval_iters", int, 20),
            ("always_save_checkpoint", flag, False), ("batch_size", int, 12),
            ("block_size", int, 64), ("n_layer", int, 4), ("n_head", int, 4),
            ("n_embd", int, 128), ("dropout", float, 0.0), ("bias", flag, False),
            ("learning_rate", float, 1e-3), ("max_iters", int, 2000),
            ("weight_decay", float, 0.1), ("beta1", float, 0.9), ("beta2", float, 0.99),
            ("grad_clip", float, 1.0), ("decay_lr", flag, True), ("warmup_iters", int, 100),
            ("lr_decay_iters", int, 2000), ("min_lr", float, 1e-4), ("seed", int, 1337)):
        ap.add_argument(f"--{name}", type=kind, default=default)
    ap.add_argument("--data", default=os.path.join(os.environ.get("JAXLM_DATA", "../shared/data"),
                                                   "tinyshakespeare/input.txt"))
    ap.add_argument("--out_dir", default="runs/nanogpt_reference",
                    help="ckpt.pt, data/{train,val}.bin, meta.pkl and report.json go here")
    ap.add_argument("--report", help="JSON report path (default: OUT_DIR/report.json)")
    return ap.parse_args(argv)


def prepare(text_path: Path, data_dir: Path) -> int:
    """nanoGPT's data/shakespeare_char/prepare.py: the vocabulary size, bins written."""
    data = text_path.read_text()
    chars = sorted(set(data))
    stoi = {c: i for i, c in enumerate(chars)}
    cut = int(len(data) * 0.9)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", data[:cut]), ("val", data[cut:])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data_dir / f"{name}.bin")
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return len(chars)


def get_batch(data_dir: Path, split: str, batch_size: int, block_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh memmap per batch, as train.py does (it avoids a memmap memory leak)."""
    data = np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64))
                     for i in ix])
    return x, y


def get_lr(it: int, a: argparse.Namespace) -> float:
    """train.py's schedule: linear warmup, cosine decay to min_lr at lr_decay_iters."""
    if it < a.warmup_iters:
        return a.learning_rate * (it + 1) / (a.warmup_iters + 1)
    if it > a.lr_decay_iters:
        return a.min_lr
    ratio = (it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.learning_rate - a.min_lr)


@torch.no_grad()
def estimate_loss(model: GPT, data_dir: Path, a: argparse.Namespace) -> dict[str, float]:
    """train.py's estimate: the mean loss of eval_iters random batches per split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(a.eval_iters)
        for k in range(a.eval_iters):
            x, y = get_batch(data_dir, split, a.batch_size, a.block_size)
            losses[k] = model(x, y)[1].item()
        out[split] = float(losses.mean())
    model.train()
    return out


@torch.no_grad()
def full_val_loss(model: GPT, data_dir: Path, block_size: int, rows: int = 256) -> float:
    """Every validation token once, non-overlapping block_size windows: `jaxlm pretrain`'s figure
    (not part of nanoGPT's job; scored after the clock stops)."""
    model.eval()
    val = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(val) - 1) // block_size
    total, count = 0.0, 0
    for s in range(0, n, rows):
        starts = range(s * block_size, min(s + rows, n) * block_size, block_size)
        x = torch.stack([val[i:i + block_size] for i in starts])
        y = torch.stack([val[i + 1:i + 1 + block_size] for i in starts])
        logits, _ = model(x)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return total / count


def train(a: argparse.Namespace, data_dir: Path, out_dir: Path, vocab: int) -> tuple[GPT, dict]:
    """train.py's loop (iter 0..max_iters inclusive); returns the model and what it measured."""
    torch.manual_seed(a.seed)
    model_args = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                      block_size=a.block_size, bias=a.bias, vocab_size=vocab, dropout=a.dropout)
    model = GPT(vocab, a.block_size, a.n_layer, a.n_head, a.n_embd, a.bias, a.dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=a.learning_rate, betas=(a.beta1, a.beta2))
    config = {k: v for k, v in vars(a).items() if isinstance(v, (int, float, bool, str))}
    evals, logs = [], []
    eval_s = ckpt_s = 0.0
    best_val_loss = 1e9
    x, y = get_batch(data_dir, "train", a.batch_size, a.block_size)
    iter_num, t0 = 0, time.time()
    while True:
        lr = get_lr(iter_num, a) if a.decay_lr else a.learning_rate
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % a.eval_interval == 0:
            te = time.time()
            losses = estimate_loss(model, data_dir, a)
            eval_s += time.time() - te
            print(f"step {iter_num}: train loss {losses['train']:.4f}, "
                  f"val loss {losses['val']:.4f}", flush=True)
            evals.append({"iter": iter_num, **losses})
            if losses["val"] < best_val_loss or a.always_save_checkpoint:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    tc = time.time()
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "model_args": model_args, "iter_num": iter_num,
                                "best_val_loss": best_val_loss, "config": config},
                               out_dir / "ckpt.pt")
                    ckpt_s += time.time() - tc
        _, loss = model(x, y)
        x, y = get_batch(data_dir, "train", a.batch_size, a.block_size)  # train.py's prefetch
        loss.backward()
        if a.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % a.log_interval == 0:
            lossf = loss.item()
            logs.append({"iter": iter_num, "loss": lossf, "dt_s": dt})
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms", flush=True)
        iter_num += 1
        if iter_num > a.max_iters:
            break
    return model, {"iters": iter_num, "evals": evals, "logs": logs, "eval_s": eval_s,
                   "checkpoint_s": ckpt_s, "best_val_estimate": best_val_loss,
                   "params": sum(p.numel() for p in params)}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    spawned = os.environ.get(SPAWN_ENV)
    t_start = float(spawned) if spawned else T_MODULE
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    tp = time.time()
    vocab = prepare(Path(a.data), data_dir)
    prepare_s = time.time() - tp
    print(f"vocab size {vocab}; torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    tl = time.time()
    model, measured = train(a, data_dir, out_dir, vocab)
    t_end = time.time()
    job_s, loop_s = t_end - t_start, t_end - tl
    full = full_val_loss(model, data_dir, a.block_size)
    score_s = time.time() - t_end
    print(f"job {job_s:.1f}s (loop {loop_s:.1f}s, evaluation {measured['eval_s']:.1f}s, "
          f"checkpoints {measured['checkpoint_s']:.1f}s); full validation loss {full:.4f} "
          f"(scored in {score_s:.1f}s, not timed)", flush=True)
    report = {"what": "nanoGPT train.py protocol (benchmarks/nanogpt_reference.py)",
              "job_s": job_s, "clock_from": "spawn" if spawned else "module",
              "startup_s": T_MODULE - t_start, "prepare_s": prepare_s, "loop_s": loop_s,
              "full_val_loss": full, "score_s": score_s, "vocab_size": vocab,
              "config": vars(a), **measured,
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "threads": torch.get_num_threads()}
    report_path = Path(a.report) if a.report else out_dir / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
