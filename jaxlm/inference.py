"""Batched prediction with a loaded classifier run.

Used by `jaxlm evaluate` and `jaxlm predict`, and by researchers who want a trained model back in
Python: `run = Run("runs/sst2").load(); probs = predict_proba(run, ["a fine film"])` (`jaxlm.run`).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm.errors import CheckpointError
from jaxlm.run import LoadedRun


def _pad_batch(ids: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(ids), length), pad_id, np.int32)
    seg = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = row
        seg[i, :len(row)] = 1
    return tokens, seg


def _bucket(n: int, max_len: int) -> int:
    return min(max_len, max(16, 1 << math.ceil(math.log2(max(n, 1)))))


def predict_proba(run: LoadedRun, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Class probabilities [N, C] for texts, in batches padded to power-of-two lengths (one
    compiled program per length bucket, reused across batches)."""
    if run.objective != "classification":
        raise CheckpointError(f"'{run.run_dir}' is a {run.objective} language model, not a "
                              "classifier: predict needs a `jaxlm finetune` run.",
                              culprit=str(run.run_dir))
    from jaxlm.data.classification import encode_texts

    seq_len = run.cfg.data.seq_len
    ids = [row.tolist() for row in encode_texts(run.tokenizer, texts, seq_len)]
    graphdef, params = nnx.split(run.model)

    @jax.jit
    def probs(params, tokens, seg):
        return jax.nn.softmax(nnx.merge(graphdef, params)(tokens, segment_ids_BxT=seg), axis=-1)

    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        length = _bucket(max(len(r) for r in chunk), seq_len)
        tokens, seg = _pad_batch(chunk, length, run.tokenizer.pad_id or 0)
        n = len(chunk)
        if n < batch_size:  # pad the batch too, so the last batch reuses the compiled program
            tokens = np.concatenate([tokens, np.zeros((batch_size - n, length), np.int32)])
            seg = np.concatenate([seg, np.zeros((batch_size - n, length), np.int32)])
            seg[n:, 0] = 1
        out.append(np.asarray(probs(params, tokens, seg))[:n])
    return np.concatenate(out) if out else np.zeros((0, len(run.class_names)), np.float32)
