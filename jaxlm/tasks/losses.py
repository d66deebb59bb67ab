"""Losses: what a model is asked to predict and how it is scored.

The loss contract (`LossFn`): `loss(model, batch, dropout_rng) -> (loss_sum, aux)`, where
`aux["weight"]` is the number of scored targets and every other entry of `aux` is a sum over those
targets (e.g. `aux["accuracy"]`: how many were predicted right). Steps divide the loss and every
other entry by the total weight, so gradient accumulation over micro-batches gives the same update
and the same logged metrics as one big batch, and a custom loss's extra entries are logged as
means per target.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]


@jax.custom_vjp
def cross_entropy_and_hit(logits_BxTxV: jax.Array, labels_BxT: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy (float32) and whether the label has the highest logit.

    One pass for the max, one for the log-sum-exp, a gather for the label logit; the backward pass
    is a single fused `softmax - onehot` (optax's version plus an argmax made XLA:CPU read and
    write the [B, T, V] logits several more times). A label tied with the best logit counts as a
    hit. Labels outside [0, V) score 0 and get no gradient (they must carry weight 0).
    """
    return _ce_fwd(logits_BxTxV, labels_BxT)[0]


def _ce_fwd(logits, labels):
    logits = logits.astype(jnp.float32)
    max_BxT = jnp.max(logits, -1)
    lse_BxT = jnp.log(jnp.sum(jnp.exp(logits - max_BxT[..., None]), -1)) + max_BxT
    label_BxT = jnp.take_along_axis(logits, labels[..., None], -1, mode="clip")[..., 0]
    valid = (labels >= 0) & (labels < logits.shape[-1])
    ce = jnp.where(valid, lse_BxT - label_BxT, 0.0)
    return (ce, valid & (label_BxT >= max_BxT)), (logits, labels, lse_BxT)


def _ce_bwd(res, g):
    logits, labels, lse_BxT = res
    onehot = jnp.arange(logits.shape[-1]) == labels[..., None]
    valid = ((labels >= 0) & (labels < logits.shape[-1]))[..., None]
    d = jnp.where(valid, jnp.exp(logits - lse_BxT[..., None]) - onehot, 0.0) * g[0][..., None]
    return d, None


cross_entropy_and_hit.defvjp(_ce_fwd, _ce_bwd)


def token_loss(model: Any, batch: Batch, dropout_rng: jax.Array | None) -> tuple[jax.Array, dict]:
    """Cross-entropy over scored tokens (causal LM: next token; masked LM: masked tokens)."""
    logits_BxTxV = model(batch["inputs"], segment_ids_BxT=batch.get("segment_ids"),
                         positions_BxT=batch.get("positions"), dropout_rng=dropout_rng)
    ce_BxT, hit_BxT = cross_entropy_and_hit(logits_BxTxV, batch["targets"])
    w_BxT = batch["weights"].astype(jnp.float32)
    return (ce_BxT * w_BxT).sum(), {"weight": w_BxT.sum(),
                                    "accuracy": (hit_BxT.astype(jnp.float32) * w_BxT).sum()}


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The keyword arguments a model is called with for `batch`, besides its inputs: segment ids,
    positions when the batch has them (packed rows), and for packed classification rows (labels
    [B, K]) the number of example slots per row."""
    kw: dict[str, Any] = {"segment_ids_BxT": batch.get("segment_ids")}
    if "positions" in batch:
        kw["positions_BxT"] = batch["positions"]
    labels = batch.get("labels")
    if labels is not None and labels.ndim == 2:
        kw["examples_per_row"] = labels.shape[1]
    return kw


def classification_loss(model: Any, batch: Batch, dropout_rng: jax.Array | None
                        ) -> tuple[jax.Array, dict]:
    """Cross-entropy of the pooled class logits; `weights` is 0 for padding rows (and for the
    empty example slots of packed rows, whose labels and weights are [B, K])."""
    logits = model(batch["inputs"], **model_inputs(batch), dropout_rng=dropout_rng)
    logits_NxC = logits.reshape(-1, logits.shape[-1])
    labels_N = batch["labels"].reshape(-1)
    ce_N = optax.softmax_cross_entropy_with_integer_labels(logits_NxC, labels_N)
    w_N = batch["weights"].astype(jnp.float32).reshape(-1)
    correct = (jnp.argmax(logits_NxC, -1) == labels_N).astype(jnp.float32)
    return (ce_N * w_N).sum(), {"weight": w_N.sum(), "accuracy": (correct * w_N).sum()}


LOSSES: dict[str, LossFn] = {
    "causal": token_loss,
    "masked": token_loss,
    "classification": classification_loss,
    "generative": token_loss,  # the target tokens weigh 1, the prompt 0
}
