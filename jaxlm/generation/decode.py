"""Decoding with a fixed-size key/value cache: a jitted prefill, then a jitted `lax.while_loop`.

Prompts are left-padded to a common length P, so every row writes its next key/value at the same
cache slot (one `dynamic_update_slice` per layer) while its positions start at 0 at its own first
token: position = slot - pad. That keeps learned absolute positions (GPT-2) and rotary ones (Llama)
right for prompts of different lengths; padding slots are masked out of attention.

The cache holds S = P + N - 1 slots for N new tokens (the last token is never fed back).
`prefill` compiles once per (B, P, N); `decode` once per (B, S): P is a value in its state (N
follows from S and P) and the output buffer has S columns, so the windows of a long generation
(`jaxlm.generate`: the first continues the prompt, the later ones a shorter context, all filling
the same S slots) share one decode program instead of compiling one per window shape.
`decode` runs until `stop_at` tokens exist or every row has met a stop token; calling it again with
a larger `stop_at` continues, which is how text streams in chunks without recompiling.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.generation.sampling import Sampling, sample
from jaxlm.models.layers import dtypes
from jaxlm.sharding import shard

Cache = list[tuple[jax.Array, jax.Array]]
# cache, out [B, S] (new token i in column i), step, done [B], pad [B], key, stop_ids [n],
# nonfinite (NaN/Inf logits seen), prompt_len P (an int32 scalar; N = S - P + 1)
DecodeState = dict[str, Any]

CACHE_AXES = ("batch", "length", "act_kv_heads", None)


def new_cache(cfg: Any, batch: int, slots: int) -> Cache:
    """Zeroed per-layer (key, value) caches [B, S, G, K] in the compute dtype."""
    shape = (batch, slots, cfg.num_kv_heads, cfg.head_dim)
    dtype = dtypes(cfg)[0]
    return [(shard(jnp.zeros(shape, dtype), CACHE_AXES), shard(jnp.zeros(shape, dtype), CACHE_AXES))
            for _ in range(cfg.num_layers)]


def cached_logits(model: Any, tokens_BxT: jax.Array, cache: Cache, index: jax.Array,
                  pad_B: jax.Array, *, last_only: bool = True) -> tuple[jax.Array, Cache]:
    """Logits for T tokens written at cache slots index..index+T-1 of left-padded rows.

    Returns logits [B, V] of the last token (or [B, T, V] with last_only=False) and the new cache.
    """
    B, T = tokens_BxT.shape
    S = cache[0][0].shape[1]
    positions_BxT = jnp.maximum(index + jnp.arange(T)[None, :] - pad_B[:, None], 0)
    valid_BxS = jnp.arange(S)[None, :] >= pad_B[:, None]
    x_BxTxD, cache = model.backbone.decode(tokens_BxT, cache, index, positions_BxT, valid_BxS)
    if last_only:
        x_BxTxD = x_BxTxD[:, -1:]
    logits = model.lm_head(x_BxTxD, model.backbone.embeddings)
    return (logits[:, 0] if last_only else logits), cache


def _next(logits_BxV: jax.Array, key: jax.Array, step: jax.Array, sampling: Sampling,
          done_B: jax.Array, stop_ids: jax.Array, filler: int) -> tuple[jax.Array, jax.Array]:
    """Sample token `step` of every row; rows already done get `filler`. Returns (tokens, done)."""
    tok_B = sample(logits_BxV, jax.random.fold_in(key, step), sampling)
    tok_B = jnp.where(done_B, filler, tok_B)
    return tok_B, done_B | jnp.isin(tok_B, stop_ids)


def _nonfinite(logits_BxV: jax.Array, done_B: jax.Array) -> jax.Array:
    """Whether a row still generating got a NaN or Inf logit (a damaged or diverged model, whose
    samples would be meaningless)."""
    return jnp.any(~jnp.isfinite(logits_BxV) & ~done_B[:, None])


def _prefill(graphdef: nnx.GraphDef, params: Any, tokens_BxP: jax.Array, pad_B: jax.Array,
            done_B: jax.Array, key: jax.Array, stream: jax.Array, stop_ids: jax.Array, *,
            num_new: int, sampling: Sampling, filler: int = 0) -> DecodeState:
    """Run the prompts through the model, fill the cache and sample the first new token.

    tokens_BxP: left-padded prompts; pad_B: each row's number of padding slots; done_B: rows to
    skip (they emit `filler`); key, stream: a PRNG key and int32 numbers folded into it in turn
    (the caller's prompt group and window), so that no key program compiles apart from this
    one; new token i uses fold_in(that key, i).
    """
    for i in range(stream.shape[0]):
        key = jax.random.fold_in(key, stream[i])
    model = nnx.merge(graphdef, params)
    B, P = tokens_BxP.shape
    cache = new_cache(model.backbone.cfg, B, P + num_new - 1)
    logits_BxV, cache = cached_logits(model, tokens_BxP, cache, jnp.int32(0), pad_B)
    step = jnp.int32(0)
    nonfinite = _nonfinite(logits_BxV, done_B)
    tok_B, done_B = _next(logits_BxV, key, step, sampling, done_B, stop_ids, filler)
    out_BxS = jnp.full((B, P + num_new - 1), filler, jnp.int32).at[:, 0].set(tok_B)
    return {"cache": cache, "out": shard(out_BxS, ("batch", None)), "step": step + 1,
            "done": done_B, "pad": pad_B, "key": key, "stop_ids": stop_ids,
            "nonfinite": nonfinite, "prompt_len": jnp.int32(P)}


def _decode(graphdef: nnx.GraphDef, params: Any, state: DecodeState, stop_at: jax.Array, *,
           sampling: Sampling, filler: int = 0) -> DecodeState:
    """Generate tokens one at a time (a while loop) until `stop_at` tokens (at most N)
    exist in every row, or every row is done. The state's buffers are donated and updated."""
    model = nnx.merge(graphdef, params)
    P = state["prompt_len"]
    N = state["cache"][0][0].shape[1] - P + 1
    limit = jnp.minimum(stop_at, N)

    def cond(st: DecodeState) -> jax.Array:
        return (st["step"] < limit) & ~jnp.all(st["done"])

    def body(st: DecodeState) -> DecodeState:
        i = st["step"]
        prev_Bx1 = jax.lax.dynamic_slice_in_dim(st["out"], i - 1, 1, axis=1)
        logits_BxV, cache = cached_logits(model, prev_Bx1, st["cache"], P + i - 1, st["pad"])
        nonfinite = st["nonfinite"] | _nonfinite(logits_BxV, st["done"])
        tok_B, done_B = _next(logits_BxV, st["key"], i, sampling, st["done"], st["stop_ids"],
                              filler)
        out = jax.lax.dynamic_update_slice_in_dim(st["out"], tok_B[:, None], i, axis=1)
        return {**st, "cache": cache, "out": out, "step": i + 1, "done": done_B,
                "nonfinite": nonfinite}

    return jax.lax.while_loop(cond, body, state)


class Decoder:
    """`prefill` and `decode` jitted for one model structure (an nnx GraphDef, which holds an
    unhashable config and so cannot be a static jit argument)."""

    def __init__(self, graphdef: nnx.GraphDef):
        self.graphdef = graphdef
        self.prefill = jax.jit(functools.partial(_prefill, graphdef),
                               static_argnames=("num_new", "sampling", "filler"))
        self.decode = jax.jit(functools.partial(_decode, graphdef),
                              static_argnames=("sampling", "filler"), donate_argnames=("state",))


_DECODERS: list[Decoder] = []


def decoder_for(graphdef: nnx.GraphDef, keep: int = 4) -> Decoder:
    """The Decoder of an equal model structure if one was built recently (so repeated
    `generate` calls reuse compilations), else a new one."""
    for d in _DECODERS:
        if d.graphdef == graphdef:
            return d
    d = Decoder(graphdef)
    _DECODERS.insert(0, d)
    del _DECODERS[keep:]
    return d
