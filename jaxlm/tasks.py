"""Objectives: what a model is asked to predict and how it is scored.

Every loss function returns `(loss_sum, aux)` where `aux["weight"]` is the number of scored
targets; steps divide by the total weight, so gradient accumulation over micro-batches gives the
same update as one big batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]


def token_loss(model: Any, batch: Batch, dropout_rng: jax.Array | None) -> tuple[jax.Array, dict]:
    """Cross-entropy over scored tokens (causal LM: next token; masked LM: masked tokens)."""
    logits_BxTxV = model(batch["inputs"], segment_ids_BxT=batch.get("segment_ids"),
                         positions_BxT=batch.get("positions"), dropout_rng=dropout_rng)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch["targets"])
    w_BxT = batch["weights"].astype(jnp.float32)
    correct = (jnp.argmax(logits_BxTxV, -1) == batch["targets"]).astype(jnp.float32)
    return (ce_BxT * w_BxT).sum(), {"weight": w_BxT.sum(), "correct": (correct * w_BxT).sum()}


def classification_loss(model: Any, batch: Batch, dropout_rng: jax.Array | None
                        ) -> tuple[jax.Array, dict]:
    """Cross-entropy of the pooled class logits; `weights` [B] is 0 for padding rows."""
    logits_BxC = model(batch["inputs"], segment_ids_BxT=batch.get("segment_ids"),
                       dropout_rng=dropout_rng)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"])
    w_B = batch["weights"].astype(jnp.float32)
    correct = (jnp.argmax(logits_BxC, -1) == batch["labels"]).astype(jnp.float32)
    return (ce_B * w_B).sum(), {"weight": w_B.sum(), "correct": (correct * w_B).sum()}


LOSSES: dict[str, LossFn] = {
    "causal": token_loss,
    "masked": token_loss,
    "classification": classification_loss,
}
