"""A PyTorch reference for configs/shakespeare_char.yaml: nanoGPT's CPU recipe written out in plain
PyTorch, scored with the same full-validation loss jaxlm reports and with nanoGPT's own estimator.

Why: nanoGPT's README quotes "~1.88" for this configuration, but that number comes from
`estimate_loss()` with --eval_iters=20, i.e. 20 random batches of 12 windows (15,360 tokens, about
14% of the validation text), and nanoGPT keeps the best such estimate. This script trains the same
model the same way and prints both estimators, so the jaxlm number can be compared like for like.

The model and loop follow nanoGPT's configuration (not its code): character vocabulary of the
whole file, first 90% train / last 10% validation, 4 layers, 4 heads, 128 dims, context 64,
bias=False everywhere (linear layers and LayerNorms), exact GELU, tied token embedding and output
projection, normal(0.02) init with the residual projections at 0.02/sqrt(2 * layers), no dropout;
batch 12 random windows, 2,000 steps, AdamW (0.9, 0.99), lr 1e-3 with 100 linear warmup steps and
cosine decay to 1e-4, weight decay 0.1 on matrices (embeddings included), gradient clipping 1.0.

Scores at the end (no best-of selection):
- full: every validation token once, non-overlapping 64-windows (what `jaxlm pretrain` reports);
- nanoGPT estimate: mean loss of 20 random batches of 12 windows, repeated --estimates times with
  different random batches, to show its spread.

    .venv/bin/python benchmarks/shakespeare_torch_reference.py [--seeds 0 1 2] [--data FILE] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see minilm_sst2_torch_reference.py

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LAYERS, HEADS, DIM, CONTEXT, BATCH, STEPS = 4, 4, 128, 64, 12, 2000
LR, MIN_LR, WARMUP, WEIGHT_DECAY, CLIP = 1e-3, 1e-4, 100, 0.1, 1.0


class Block(nn.Module):
    """Pre-LayerNorm attention + GELU MLP, no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM, bias=False)
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.out = nn.Linear(DIM, DIM, bias=False)
        self.ln2 = nn.LayerNorm(DIM, bias=False)
        self.up = nn.Linear(DIM, 4 * DIM, bias=False)
        self.down = nn.Linear(4 * DIM, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(DIM, dim=-1)
        q, k, v = (t.view(B, T, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, DIM))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class CharGPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, DIM)
        self.pos = nn.Embedding(CONTEXT, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(DIM, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T  # tied output projection


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    ratio = (step - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def windows(data: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([data[i:i + CONTEXT] for i in starts.tolist()])
    y = torch.stack([data[i + 1:i + 1 + CONTEXT] for i in starts.tolist()])
    return x, y


@torch.no_grad()
def full_val_loss(model: nn.Module, val: torch.Tensor) -> float:
    """Every validation token once: non-overlapping windows of CONTEXT (+1 for the target)."""
    n = (len(val) - 1) // CONTEXT
    total, count = 0.0, 0
    for s in range(0, n, 256):
        starts = torch.arange(s, min(s + 256, n)) * CONTEXT
        x, y = windows(val, starts)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
        total, count = total + loss.item(), count + y.numel()
    return total / count


@torch.no_grad()
def nanogpt_estimate(model: nn.Module, val: torch.Tensor, gen: torch.Generator) -> float:
    """nanoGPT's estimate_loss(): the mean of 20 batches of random windows."""
    losses = []
    for _ in range(20):
        x, y = windows(val, torch.randint(len(val) - CONTEXT, (BATCH,), generator=gen))
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    return sum(losses) / len(losses)


def train(seed: int, train_ids: torch.Tensor, vocab: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = CharGPT(vocab).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = windows(train_ids, torch.randint(len(train_ids) - CONTEXT, (BATCH,), generator=gen))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--estimates", type=int, default=10, help="nanoGPT estimates per seed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data", default=os.path.join(os.environ.get("JAXLM_DATA", "../shared/data"),
                                                   "tinyshakespeare/input.txt"))
    args = ap.parse_args()
    text = Path(args.data).read_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    train_ids, val_ids = ids[:cut], ids[cut:]
    torch.set_num_threads(args.threads)
    print(f"vocabulary {len(chars)}, train {len(train_ids):,} / validation {len(val_ids):,} chars; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fulls = []
    for seed in args.seeds:
        model, wall = train(seed, train_ids, len(chars))
        full = full_val_loss(model, val_ids)
        gen = torch.Generator().manual_seed(1000 + seed)
        est = [nanogpt_estimate(model, val_ids, gen) for _ in range(args.estimates)]
        fulls.append(full)
        print(f"seed {seed}: full validation loss {full:.4f}; nanoGPT 20-batch estimates "
              f"min {min(est):.4f} median {statistics.median(est):.4f} max {max(est):.4f}; "
              f"train {wall:.0f}s ({STEPS * BATCH * CONTEXT / wall:,.0f} tokens/s)", flush=True)
    if len(fulls) > 1:
        print(f"full validation loss over {len(fulls)} seeds: {statistics.mean(fulls):.4f} ± "
              f"{statistics.stdev(fulls):.4f}")


if __name__ == "__main__":
    main()
