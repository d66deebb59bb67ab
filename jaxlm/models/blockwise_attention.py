"""Attention in query blocks with a hand-written backward pass: the fast path where no fused kernel
exists (XLA:CPU), `model.attention_impl: blockwise`.

`jax.nn.dot_product_attention(implementation="xla")` materialises float32 [B, N, T, S] scores and
lets autodiff differentiate the softmax, so one causal layer makes some twenty passes over a
[B, N, T, T] float32 tensor (fwd + bwd) and computes the masked upper triangle it then throws
away. On a CPU those passes are what it spends its time on (fwd+bwd of one layer at B 8, T 256,
6 heads of 64, bf16: 19.3 ms, this module 11.8 ms; benchmarks/attention_blockwise_vs_xla.py). Here:

- causal attention runs in query blocks: block i attends only to keys up to its own end, so the
  fully masked blocks above the diagonal are never computed (T 256 in blocks of 64: 62.5% of the
  score matrix);
- scores accumulate in float32 and the softmax is float32; the probabilities are stored once, in
  the compute dtype, for both the output matmul and the backward pass;
- the backward pass is flash attention's: dS = P * (dP - D) with D = rowsum(dO * O) per query, a
  [B, T, N] reduction instead of one over the score matrix.

Masks come from segment ids (0 = padding) plus causality, built per block; an explicit mask tensor
(decoding with a cache) goes to the XLA implementation instead. Grouped-query heads share their
key/value head without copies. Pure jnp, so it shards like any other XLA code under a mesh.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

QUERY_BLOCK = 64
_MASKED = -1e30  # finite: a query with no visible key (padding) averages instead of making NaNs


def query_blocks(T: int, causal: bool) -> list[tuple[int, int]]:
    """[start, end) of each query block: one block without causality (nothing to skip)."""
    if not causal or T <= QUERY_BLOCK:
        return [(0, T)]
    return [(a, min(a + QUERY_BLOCK, T)) for a in range(0, T, QUERY_BLOCK)]


def _grouped(q_BxTxHxK: jax.Array, G: int) -> jax.Array:
    B, T, H, K = q_BxTxHxK.shape
    return q_BxTxHxK.reshape(B, T, G, H // G, K)


def _block_mask(a: int, e: int, S: int, causal: bool, seg_BxT: jax.Array | None) -> jax.Array | None:
    """Boolean mask [B or 1, 1, 1, e - a, S] of queries a..e-1 over keys 0..S-1, or None."""
    mask = None
    if causal:
        mask = (jnp.arange(a, e)[:, None] >= jnp.arange(S)[None, :])[None, None, None]
    if seg_BxT is not None:
        q_seg, k_seg = seg_BxT[:, a:e], seg_BxT[:, :S]
        same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
        same = same[:, None, None]
        mask = same if mask is None else mask & same
    return mask


def _block_forward(q_BxtxGxRxK, k_BxsxGxK, v_BxsxGxK, mask, scale):
    s = jnp.einsum("btgrk,bsgk->bgrts", q_BxtxGxRxK, k_BxsxGxK,
                   preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, _MASKED)
    p = jnp.exp(s - s.max(-1, keepdims=True))
    p = (p * (1.0 / p.sum(-1, keepdims=True))).astype(q_BxtxGxRxK.dtype)
    o = jnp.einsum("bgrts,bsgk->btgrk", p, v_BxsxGxK, preferred_element_type=jnp.float32)
    return o.astype(q_BxtxGxRxK.dtype), p


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxT, causal: bool):
    return _forward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxT, causal)[0]


def _forward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxT, causal):
    B, T, H, K = q_BxTxHxK.shape
    S, G = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
    q = _grouped(q_BxTxHxK, G)
    outs, probs = [], []
    for a, e in query_blocks(T, causal):
        s_end = e if causal else S
        o, p = _block_forward(q[:, a:e], k_BxSxGxK[:, :s_end], v_BxSxGxK[:, :s_end],
                              _block_mask(a, e, s_end, causal, seg_BxT), K ** -0.5)
        outs.append(o)
        probs.append(p)
    o = jnp.concatenate(outs, 1) if len(outs) > 1 else outs[0]
    return o.reshape(B, T, H, K), (q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxT, probs, o)


def _backward(causal, res, do_BxTxHxK):
    q_BxTxHxK, k, v, seg_BxT, probs, o = res
    B, T, H, K = q_BxTxHxK.shape
    S, G = k.shape[1], k.shape[2]
    dtype = q_BxTxHxK.dtype
    q, do = _grouped(q_BxTxHxK, G), _grouped(do_BxTxHxK.astype(dtype), G)
    # D = rowsum(dO * O): the softmax backward's per-query term, without touching the scores
    # (an elementwise product and a sum: as an einsum, XLA:CPU makes it thousands of tiny dots)
    D_BxTxGxR = (do.astype(jnp.float32) * o.astype(jnp.float32)).sum(-1)
    D_BxGxRxT = jnp.transpose(D_BxTxGxR, (0, 2, 3, 1))
    dq, dk_parts, dv_parts = [], [], []
    for (a, e), p in zip(query_blocks(T, causal), probs):
        s_end = e if causal else S
        do_b = do[:, a:e]
        dv_b = jnp.einsum("bgrts,btgrk->bsgk", p, do_b, preferred_element_type=jnp.float32)
        dp = jnp.einsum("btgrk,bsgk->bgrts", do_b, v[:, :s_end],
                        preferred_element_type=jnp.float32)
        ds = (p.astype(jnp.float32) * (dp - D_BxGxRxT[..., a:e, None]) * K ** -0.5).astype(dtype)
        dq.append(jnp.einsum("bgrts,bsgk->btgrk", ds, k[:, :s_end],
                             preferred_element_type=jnp.float32))
        dk_b = jnp.einsum("bgrts,btgrk->bsgk", ds, q[:, a:e], preferred_element_type=jnp.float32)
        dk_parts.append(dk_b)
        dv_parts.append(dv_b)
    dq = jnp.concatenate(dq, 1) if len(dq) > 1 else dq[0]
    dk, dv = _sum_key_blocks(dk_parts, S), _sum_key_blocks(dv_parts, S)
    dseg = None if seg_BxT is None else jnp.zeros(seg_BxT.shape, jax.dtypes.float0)
    return (dq.reshape(B, T, H, K).astype(dtype), dk.astype(k.dtype), dv.astype(v.dtype), dseg)


def _sum_key_blocks(parts_BxsxGxK: list[jax.Array], S: int) -> jax.Array:
    """Sum of per-query-block key gradients over keys 0..s-1, zero-padded to S: one fused pass
    (in-place `.at[].add` updates copy the whole float32 buffer once per block on CPU)."""
    pad = lambda x: jnp.pad(x, ((0, 0), (0, S - x.shape[1]), (0, 0), (0, 0)))
    return functools.reduce(jnp.add, [pad(x) for x in parts_BxsxGxK])


_attention.defvjp(_forward, _backward)


def blockwise_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                        causal: bool, segment_ids_BxT: jax.Array | None) -> jax.Array:
    """Attention output [B, T, H, K]; `causal` needs T == S (self-attention)."""
    if causal and q_BxTxHxK.shape[1] != k_BxSxGxK.shape[1]:
        raise ValueError(f"causal blockwise attention needs as many keys as queries, got "
                         f"{k_BxSxGxK.shape[1]} keys for {q_BxTxHxK.shape[1]} queries")
    return _attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, segment_ids_BxT, causal)
