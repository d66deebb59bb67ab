"""The Transformer backbone shared by every family and task.

One class covers GPT-2 (pre-LN, learned positions, GELU, biases), Llama (RMSNorm, RoPE, SwiGLU,
grouped-query attention, no biases) and BERT (post-LN, learned + token-type embeddings, GELU);
`ModelConfig.resolved()` fills the family's choices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.errors import ConfigError
from jaxlm.models.layers import (MLP, Attention, Norm, attention_mask, dropout, dtypes,
                                 materialize_grad, rope_tables)
from jaxlm.sharding import shard

REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Embeddings(nnx.Module):
    """Token (+ learned position, + token type) embeddings."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        _, param_dtype = dtypes(cfg)
        init = nnx.initializers.normal(cfg.init_std)

        def embed(n: int, names: tuple[str | None, str]) -> nnx.Embed:
            return nnx.Embed(n, cfg.d_model, param_dtype=param_dtype, dtype=dtypes(cfg)[0],
                             embedding_init=init, embedding_metadata={"logical_axes": names},
                             rngs=rngs)

        self.token = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position = embed(cfg.max_len, (None, "embed")) if cfg.position == "learned" else None
        self.token_type = embed(cfg.type_vocab_size, (None, "embed")) if cfg.type_vocab_size else None
        self.norm = Norm(cfg, cfg.d_model, rngs) if cfg.embed_norm else None

    def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                 token_types_BxT: jax.Array | None) -> jax.Array:
        x = self.token(tokens_BxT)
        if self.position is not None:
            x = x + self.position(positions_BxT)
        if self.token_type is not None:
            types = jnp.zeros_like(tokens_BxT) if token_types_BxT is None else token_types_BxT
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        return x.astype(dtypes(self.cfg)[0])


class Block(nnx.Module):
    """Attention + MLP with pre- or post-normalisation."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = Norm(cfg, cfg.d_model, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg, cfg.d_model, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BxTxD: jax.Array, mask: jax.Array | None, rope, rng: jax.Array | None,
                 kv=None, cache_index: jax.Array | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        rngs = (None, None, None) if rng is None else tuple(jax.random.split(rng, 3))
        if self.cfg.norm_position == "pre":
            h, new_kv = self.attn(self.attn_norm(x_BxTxD), mask, rope, rngs[0], kv, cache_index)
            x = materialize_grad(x_BxTxD + dropout(h, self.cfg.dropout, rngs[1]))
            x = x + dropout(self.mlp(self.mlp_norm(x)), self.cfg.dropout, rngs[2])
        else:
            h, new_kv = self.attn(x_BxTxD, mask, rope, rngs[0], kv, cache_index)
            x = materialize_grad(self.attn_norm(x_BxTxD + dropout(h, self.cfg.dropout, rngs[1])))
            x = self.mlp_norm(x + dropout(self.mlp(x), self.cfg.dropout, rngs[2]))
        return shard(materialize_grad(x), ("batch", "length", "act_embed")), new_kv


class Transformer(nnx.Module):
    """Embeddings, a stack of blocks and (for pre-norm families) a final norm: hidden states."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        cfg = cfg.resolved()
        if cfg.vocab_size <= 0:
            raise ConfigError("Config key 'model.vocab_size' must be set (from the tokenizer) "
                              "before building a model.", culprit="model.vocab_size")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = Norm(cfg, cfg.d_model, rngs) if cfg.final_norm else None

    def __call__(self, tokens_BxT: jax.Array, *, segment_ids_BxT: jax.Array | None = None,
                 positions_BxT: jax.Array | None = None, token_types_BxT: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Hidden states [B, T, D].

        segment_ids: packed-document ids, 0 for padding (attention never crosses segments);
        None means one segment per row, no padding. positions: per-document positions
        (default 0..T-1). dropout_rng: None for deterministic (eval) mode.
        """
        B, T = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
        # None: causal (or full) attention without a mask tensor, every kernel's fast path; else
        # the segment ids, from which each attention function builds its own (block) mask
        mask = segment_ids_BxT
        rope = (rope_tables(positions_BxT, self.cfg.head_dim, self.cfg.rope_theta,
                            self.cfg.rope_scaling)
                if self.cfg.position == "rope" else None)
        x = self.embeddings(tokens_BxT, positions_BxT, token_types_BxT)
        rngs = (jax.random.split(dropout_rng, len(self.layers) + 1) if dropout_rng is not None
                else [None] * (len(self.layers) + 1))
        x = dropout(x, self.cfg.dropout, rngs[-1])
        x = shard(x, ("batch", "length", "act_embed"))
        for layer, rng in zip(self.layers, rngs):
            x = self._run_block(layer, x, mask, rope, rng)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def decode(self, tokens_BxT: jax.Array, cache: list[tuple[jax.Array, jax.Array]],
               cache_index: jax.Array, positions_BxT: jax.Array, kv_valid_BxS: jax.Array
               ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        """Hidden states [B, T, D] for T new tokens given a per-layer key/value cache [B, S, G, K].

        Decoding (and prefill) for generation: the tokens' keys/values are written at cache slots
        cache_index..cache_index+T-1 and each query attends to the valid slots (`kv_valid_BxS`,
        e.g. not left padding) at or before its own slot. Deterministic; returns the new cache.
        """
        B, T = tokens_BxT.shape
        S = cache[0][0].shape[1]
        q_slots_BxT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
        mask = attention_mask(jnp.ones((B, T), jnp.int32), True, kv_valid_BxS.astype(jnp.int32),
                              q_slots_BxT, jnp.arange(S)[None, :])
        rope = (rope_tables(positions_BxT, self.cfg.head_dim, self.cfg.rope_theta,
                            self.cfg.rope_scaling)
                if self.cfg.position == "rope" else None)
        x = shard(self.embeddings(tokens_BxT, positions_BxT, None), ("batch", "length", "act_embed"))
        new_cache = []
        for layer, kv in zip(self.layers, cache):
            x, kv = layer(x, mask, rope, None, kv, cache_index)
            new_cache.append(kv)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, new_cache

    def _run_block(self, layer: Block, x, mask, rope, rng):
        if self.cfg.remat == "none":
            return layer(x, mask, rope, rng)[0]
        policy = REMAT_POLICIES[self.cfg.remat]

        @nnx.remat(policy=policy)
        def run(block: Block, x, mask, rope, rng):
            return block(x, mask, rope, rng)[0]

        return run(layer, x, mask, rope, rng)
