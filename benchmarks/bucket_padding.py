"""How many tokens a classification epoch pads to, by batch layout, on a real config.

Builds the training batches `jaxlm finetune` builds for the config (same tokenizer, seed, batch
size and order) four ways: packed rows (the default, `data.pack_examples`: several examples per
row of seq_len), buckets fitted to the batches (`data.pack_examples: false`), fixed powers of two
(16/32/64..., jaxlm 0.1's default) and PyTorch-style padding of each batch to its own longest
example (what `transformers`' collator does, one shape per length). Prints, for each, the token
positions per batch (as a length per example), the positions against the per-batch padding and
the number of shapes (compiled programs for jit); then the same for the validation split's
evaluation batches. Tokenisation only, no training.

`--logits` also runs the checkpoint on the validation split, packed and unpacked (untrained
head), and prints the largest difference between an example's two logits.

    .venv/bin/python benchmarks/bucket_padding.py [--config configs/minilm_sst2.yaml] [--logits]
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
    ap.add_argument("--logits", action="store_true",
                    help="compare packed and unpacked logits on the validation split")
    args = ap.parse_args(argv)

    from headline_jobs import packaged_minilm

    from jaxlm.config import load_config
    from jaxlm.data.classification import (classification_dataset, classification_eval_batches,
                                           classification_sources, default_buckets)
    from jaxlm.train.init_from import load_pretrained

    os.chdir(REPO)
    model = Path(args.model) if args.model else packaged_minilm()
    cfg = load_config(args.config)
    tok = load_pretrained(f"hf:{model}").tokenizer  # as `jaxlm finetune --init-from` loads it
    sources = classification_sources(cfg)
    t, T = cfg.train, cfg.data.seq_len

    def batches(buckets, pack=False):
        return list(iter(classification_dataset(sources["train"], tok, seq_len=T,
                                                global_batch=t.batch_size, num_steps=t.steps,
                                                seed=t.seed, buckets=buckets, pack=pack)))

    print(f"config {args.config}: {t.steps} training batches of {t.batch_size}, seq_len {T}, "
          f"tokenizer of {model}")
    fitted, packed = batches(None), batches(None, pack=True)
    _table(t.batch_size, T, fitted, packed, batches(default_buckets(T)))
    if "validation" in sources:
        kw = dict(seq_len=T, global_batch=t.eval_rows)
        ev = classification_eval_batches(sources["validation"], tok, **kw)
        ev_packed = classification_eval_batches(sources["validation"], tok, pack=True, **kw)
        print(f"\nvalidation split: {len(ev)} evaluation batches of {t.eval_rows}")
        _table(t.eval_rows, T, ev, ev_packed,
               classification_eval_batches(sources["validation"], tok,
                                           buckets=default_buckets(T), **kw))
        if args.logits:
            gap = _logit_gap(cfg, model, tok, sources["validation"])
            print(f"\nlargest |logit difference| of a validation example, packed vs unpacked "
                  f"rows (the checkpoint, untrained head): {gap:.1e}")
    return 0


def _table(batch_size: int, T: int, fitted: list, packed: list, fixed: list) -> None:
    from jaxlm.data.classification import default_buckets

    own = [int(b["segment_ids"].sum(1).max()) * batch_size for b in fitted]  # per-batch padding
    real = [int((b["segment_ids"] > 0).sum()) for b in fitted]
    base = sum(own)
    print(f"{'layout':44s} {'length/example':>15s} {'positions vs per-batch':>23s} {'shapes':>7s}")
    for name, sizes, shapes in (
            ("the examples' own tokens (no padding)", real, None),
            ("per batch, to its longest (transformers)", own, {s // batch_size for s in own}),
            ("packed rows (default)", [b["inputs"].size for b in packed],
             {b["inputs"].shape for b in packed}),
            ("buckets fitted to the batches", [b["inputs"].size for b in fitted],
             {b["inputs"].shape for b in fitted}),
            (f"fixed buckets {'/'.join(map(str, default_buckets(T)))}",
             [b["inputs"].size for b in fixed], {b["inputs"].shape for b in fixed})):
        n = "" if shapes is None else str(len(shapes))
        print(f"{name:44s} {np.mean(sizes) / batch_size:15.1f} {sum(sizes) / base:22.2f}x "
              f"{n:>7s}")


def _logit_gap(cfg, model: Path, tok, split) -> float:
    """Largest difference between an example's logits in packed and in unpacked rows."""
    import jax
    from flax import nnx

    from jaxlm.data.classification import (classification_eval_batches, encode_texts,
                                           packed_text_batches)
    from jaxlm.models import build_model
    from jaxlm.tasks.losses import model_inputs
    from jaxlm.train.fit import model_config
    from jaxlm.train.init_from import init_from_pretrained, load_pretrained

    pre, ft = load_pretrained(f"hf:{model}"), cfg.finetune
    T, B = cfg.data.seq_len, cfg.train.eval_rows
    net = build_model(model_config(cfg, tok, pre), "classification", seed=0,
                      num_labels=len(split.label_names), pooling=ft.pooling, pooler=ft.pooler)
    _, params = nnx.split(net)
    nnx.update(net, init_from_pretrained(nnx.to_pure_dict(params), pre, None, ft.pooler))
    run = jax.jit(lambda b: net(b["inputs"], **model_inputs(b)))
    flat = np.concatenate([np.asarray(run(b))
                           for b in classification_eval_batches(split, tok, seq_len=T,
                                                                global_batch=B)])
    ids = encode_texts(tok, [split[i]["text"] for i in range(len(split))], T)
    gap = 0.0
    for batch, plan in zip(*packed_text_batches(ids, tok, T, B)):
        logits = np.asarray(run(batch))
        for r, row in enumerate(plan):
            for k, i in enumerate(row):
                gap = max(gap, float(np.abs(logits[r, k] - flat[i]).max()))
    return gap


if __name__ == "__main__":
    sys.exit(main())
