"""Task heads on top of the backbone's hidden states: causal LM, masked LM, classification."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.layers import ACTIVATIONS, Norm, dense, dropout, dtypes
from jaxlm.models.mixed import mixed_matmul
from jaxlm.models.transformer import Embeddings
from jaxlm.sharding import shard


def _vocab_logits(x_BxTxD: jax.Array, embeddings: Embeddings) -> jax.Array:
    """Logits against the (tied) token embedding matrix, accumulated in float32."""
    return mixed_matmul(x_BxTxD, embeddings.token.embedding[...], True)


class LMHead(nnx.Module):
    """Next-token logits; tied to the token embeddings or a separate [D, V] matrix."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.tied = cfg.tie_embeddings
        self.proj = None if self.tied else dense(cfg, cfg.d_model, cfg.vocab_size,
                                                 ("embed", "vocab"), rngs, use_bias=False)

    def __call__(self, x_BxTxD: jax.Array, embeddings: Embeddings) -> jax.Array:
        logits = _vocab_logits(x_BxTxD, embeddings) if self.tied else self.proj(x_BxTxD)
        return shard(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))


class MLMHead(nnx.Module):
    """BERT's prediction head: dense + activation + norm, then tied decoder with a vocab bias."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.transform = dense(cfg, cfg.d_model, cfg.d_model, ("embed", None), rngs, use_bias=True)
        self.norm = Norm(cfg, cfg.d_model, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), dtypes(cfg)[1]), logical_axes=("vocab",))
        self.proj = None if cfg.tie_embeddings else dense(cfg, cfg.d_model, cfg.vocab_size,
                                                          ("embed", "vocab"), rngs, use_bias=False)

    def __call__(self, x_BxTxD: jax.Array, embeddings: Embeddings) -> jax.Array:
        h = self.norm(ACTIVATIONS[self.cfg.activation](self.transform(x_BxTxD)))
        logits = _vocab_logits(h, embeddings) if self.proj is None else self.proj(h)
        logits = logits.astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return shard(logits, ("batch", "length", "act_vocab"))


POOLINGS = ("first", "mean", "last")


def pool(x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None, pooling: str) -> jax.Array:
    """One vector per row: the first token, the mean of non-pad tokens, or the last non-pad token."""
    B, T, _ = x_BxTxD.shape
    valid_BxT = (jnp.ones((B, T), bool) if segment_ids_BxT is None else segment_ids_BxT != 0)
    if pooling == "first":
        return x_BxTxD[:, 0]
    if pooling == "mean":
        w = valid_BxT.astype(jnp.float32)[..., None]
        return ((x_BxTxD.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)).astype(x_BxTxD.dtype)
    last_B = jnp.maximum(valid_BxT.sum(1) - 1, 0)
    return jnp.take_along_axis(x_BxTxD, last_B[:, None, None], axis=1)[:, 0]


def pool_segments(x_BxTxD: jax.Array, segment_ids_BxT: jax.Array, pooling: str, slots: int
                  ) -> jax.Array:
    """One vector per packed example [B, K, D]: example k of a row is the tokens of segment
    k + 1 (its first token, their mean, or its last token); an empty slot gives a vector that is
    scored with weight 0."""
    mask_BxKxT = segment_ids_BxT[:, None, :] == jnp.arange(1, slots + 1)[None, :, None]
    if pooling == "mean":
        w = mask_BxKxT.astype(jnp.float32)
        total = jnp.einsum("bkt,btd->bkd", w, x_BxTxD.astype(jnp.float32))
        return (total / jnp.maximum(w.sum(-1), 1.0)[..., None]).astype(x_BxTxD.dtype)
    T = x_BxTxD.shape[1]
    at_BxK = (jnp.argmax(mask_BxKxT, -1) if pooling == "first"
              else T - 1 - jnp.argmax(mask_BxKxT[..., ::-1], -1))
    return jnp.take_along_axis(x_BxTxD, at_BxK[..., None], axis=1)


class ClassifierHead(nnx.Module):
    """Pooling, an optional dense+tanh pooler (BERT), dropout and a [D, C] classifier."""

    def __init__(self, cfg: ModelConfig, num_labels: int, rngs: nnx.Rngs, *, pooling: str = "first",
                 pooler: bool = False):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.cfg, self.pooling = cfg, pooling
        self.pooler = dense(cfg, cfg.d_model, cfg.d_model, ("embed", None), rngs,
                            use_bias=True) if pooler else None
        self.classifier = dense(cfg, cfg.d_model, num_labels, ("embed", "classes"), rngs,
                                use_bias=True)

    def __call__(self, x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None,
                 dropout_rng: jax.Array | None = None, examples_per_row: int = 0) -> jax.Array:
        """Logits [B, C]; of packed rows (`examples_per_row` K > 0), [B, K, C]."""
        if examples_per_row:
            if segment_ids_BxT is None:
                raise ValueError("packed rows (examples_per_row > 0) need their segment ids")
            h = pool_segments(x_BxTxD, segment_ids_BxT, self.pooling, examples_per_row)
        else:
            h = pool(x_BxTxD, segment_ids_BxT, self.pooling)
        if self.pooler is not None:
            h = jnp.tanh(self.pooler(h))
        h = dropout(h, self.cfg.dropout, dropout_rng)
        return self.classifier(h).astype(jnp.float32)
