"""How many tokens a classification epoch pads to, by length-bucket setting, on a real config.

Builds the training batches `jaxlm finetune` builds for the config (same tokenizer, seed, batch
size and order) three ways: buckets fitted to the batches (the default, `data.length_buckets`
empty), fixed powers of two (16/32/64..., jaxlm 0.1's default) and PyTorch-style padding of each
batch to its own longest example (what `transformers`' collator does, one shape per length).
Prints, for each, the mean padded length per batch, the padded tokens against the per-batch
padding and the number of shapes (compiled programs for jit). Tokenisation only, no training.

    .venv/bin/python benchmarks/bucket_padding.py [--config configs/minilm_sst2.yaml]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/minilm_sst2.yaml"))
    ap.add_argument("--model", default=None, help="HF checkpoint folder whose tokenizer to use "
                    "(default: the packaged all-MiniLM-L6-v2)")
    args = ap.parse_args(argv)

    from headline_jobs import packaged_minilm

    from jaxlm.config import load_config
    from jaxlm.data.classification import (classification_dataset, classification_sources,
                                           default_buckets)
    from jaxlm.train.init_from import load_pretrained

    os.chdir(REPO)
    model = Path(args.model) if args.model else packaged_minilm()
    cfg = load_config(args.config)
    tok = load_pretrained(f"hf:{model}").tokenizer  # as `jaxlm finetune --init-from` loads it
    train = classification_sources(cfg)["train"]
    t, T = cfg.train, cfg.data.seq_len

    def batches(buckets):
        return list(iter(classification_dataset(train, tok, seq_len=T, global_batch=t.batch_size,
                                                num_steps=t.steps, seed=t.seed,
                                                buckets=buckets)))

    fitted = batches(None)
    fixed = batches(default_buckets(T))
    own = [int(b["segment_ids"].sum(1).max()) for b in fitted]  # each batch's longest example
    base = sum(own)
    print(f"config {args.config}: {len(fitted)} training batches of {t.batch_size}, seq_len {T}, "
          f"tokenizer of {model}")
    print(f"{'padding':44s} {'mean length':>12s} {'tokens vs per-batch':>20s} {'shapes':>7s}")
    for name, lengths in (
            ("per batch, to its longest (transformers)", own),
            ("buckets fitted to the batches (default)", [b["inputs"].shape[1] for b in fitted]),
            (f"fixed buckets {'/'.join(map(str, default_buckets(T)))}",
             [b["inputs"].shape[1] for b in fixed])):
        print(f"{name:44s} {np.mean(lengths):12.1f} {sum(lengths) / base:19.2f}x "
              f"{len(set(lengths)):7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
