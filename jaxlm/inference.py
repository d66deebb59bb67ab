"""Batched prediction with a loaded fine-tuned run: a classifier's class probabilities
(`predict_proba`), a generative run's generated answers (`generate_records`).

Used by `jaxlm evaluate` and `jaxlm predict`, and by researchers who want a trained model back in
Python: `run = Run("runs/sst2").load(); probs = predict_proba(run, ["a fine film"])` (`jaxlm.run`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

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


def _batches(ids: list[list[int]], batch_size: int, seq_len: int, pad_id: int) -> list[dict]:
    """Batches padded to power-of-two lengths (one compiled program per length bucket) and to
    full batch size (rows past the texts are dropped after prediction)."""
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        length = _bucket(max(len(r) for r in chunk), seq_len)
        tokens, seg = _pad_batch(chunk + [[]] * (batch_size - len(chunk)), length, pad_id)
        seg[len(chunk):, 0] = 1  # padding rows: one dummy token, so pooling stays finite
        out.append({"inputs": tokens, "segment_ids": seg})
    return out


def _packed_logits(evaluator: Any, params: Any, encoded: list[np.ndarray], tok: Any,
                   seq_len: int, batch_size: int) -> np.ndarray:
    """Class logits [N, C] of texts packed several to a row, in the texts' order."""
    from jaxlm.data.classification import packed_text_batches

    batches, plans = packed_text_batches(encoded, tok, seq_len, batch_size)
    slots = evaluator.outputs(params, batches)  # [rows of every batch, K, C]
    out = np.zeros((len(encoded), slots.shape[-1]), slots.dtype)
    r0 = 0
    for batch, plan in zip(batches, plans):
        for r, row in enumerate(plan):
            for k, i in enumerate(row):
                out[i] = slots[r0 + r, k]
        r0 += len(batch["inputs"])
    return out


def predict_proba(run: LoadedRun, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Class probabilities [N, C] for texts, through the one evaluator (`Evaluator.outputs`)."""
    if run.task != "classification":
        raise CheckpointError(f"'{run.run_dir}' is a {run.task} language model, not a "
                              "classifier: predict needs a `jaxlm finetune` run.",
                              culprit=str(run.run_dir))
    from jaxlm.data.classification import encode_texts
    from jaxlm.evaluation import Evaluator
    from jaxlm.tasks import classification_loss

    seq_len = run.cfg.data.seq_len
    encoded = encode_texts(run.tokenizer, texts, seq_len)
    if not encoded:
        return np.zeros((0, len(run.class_names)), np.float32)
    evaluator, params = Evaluator.for_model(run.model, classification_loss)
    if run.cfg.data.packs_examples:  # as the run trained
        logits = _packed_logits(evaluator, params, encoded, run.tokenizer, seq_len, batch_size)
    else:
        ids = [row.tolist() for row in encoded]
        logits = evaluator.outputs(params, _batches(ids, batch_size, seq_len,
                                                    run.tokenizer.pad_id or 0))[:len(ids)]
    logits = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def generate_records(run: LoadedRun, lines: Sequence[str], *, batch_size: int = 64,
                     generation: dict[str, Any] | None = None, name: str = "input"
                     ) -> list[tuple[Any, str]]:
    """(input, generated output) for each non-blank line of a generative run's input: a JSON
    object is a record, other text the value of the one field the prompt template names
    (`jaxlm.data.generative.prompt_records`). Prompts are encoded exactly as in training and
    decoded with the run's generation settings, overridden by `generation` (max_new_tokens,
    temperature, top_k, top_p, seed), on the run's mesh when it fits the devices here."""
    if run.task != "generative":
        raise CheckpointError(f"'{run.run_dir}' holds a {run.task} model, not a generative one "
                              "(train.task: generative).", culprit=str(run.run_dir))
    from jaxlm.data.generative import encode_prompts, prompt_records
    from jaxlm.sharding import mesh_for_run
    from jaxlm.tasks import GenerativeTask

    task = GenerativeTask.from_head(run.head, run.cfg)
    task.set_generation(**(generation or {}))
    records = prompt_records(lines, task.templates, name)
    prompts = encode_prompts([r for _, r in records], run.tokenizer, task.templates)
    mesh = mesh_for_run(run.cfg.mesh if run.cfg is not None else None)
    outputs = task.complete(run.model, run.tokenizer, prompts, batch_size=batch_size, mesh=mesh,
                            rules=run.cfg.mesh.rules if run.cfg is not None else None)
    return [(given, out) for (given, _), out in zip(records, outputs)]
