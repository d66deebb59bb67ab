"""Scaled dot-product attention with the best kernel per backend, and a clean fallback.

`model.attention_impl`:
- `auto`: cuDNN flash attention on GPU (half precision), the Pallas splash kernel on TPU,
  `blockwise` on CPU, XLA elsewhere (or when a kernel cannot take the shapes/dtypes at hand);
- `xla`: `jax.nn.dot_product_attention`'s XLA implementation (einsums + float32 softmax);
- `blockwise`: `jaxlm.models.blockwise_attention` (causal query blocks, flash-style backward;
  pure jnp, any backend); decoding with a cache (an explicit mask) uses XLA;
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`;
- `splash`: `jax.experimental.pallas.ops.tpu.splash_attention` (block-sparse causal / segment
  masks), run per device under `shard_map` with the batch and head shardings of the logical rules.

A kernel asked for where it cannot run (another backend, unsupported shapes) falls back to XLA with
one warning naming the reason.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from jaxlm.models.blockwise_attention import blockwise_attention

_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


def choose_impl(requested: str, dtype: jnp.dtype, backend: str | None = None) -> str:
    """The implementation to try for `requested` on this backend: xla, blockwise, cudnn or
    splash."""
    backend = backend or jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if requested == "auto":
        if backend == "gpu" and half:
            return "cudnn"
        if backend == "tpu":
            return "splash"
        return "blockwise" if backend == "cpu" else "xla"
    if requested == "cudnn" and backend != "gpu":
        _warn_once(f"model.attention_impl=cudnn needs a GPU, but the backend is {backend}; "
                   "using the XLA attention instead.")
        return "xla"
    if requested == "splash" and backend != "tpu":
        _warn_once(f"model.attention_impl=splash needs a TPU, but the backend is {backend}; "
                   "using the XLA attention instead.")
        return "xla"
    return requested


def attend(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
           mask_Bx1xTxS: jax.Array | None, causal: bool, segment_ids_BxT: jax.Array | None,
           impl: str, interpret: bool = False) -> jax.Array:
    """Attention output [B, T, H, K]. With `mask_Bx1xTxS` None, the mask is `causal` (or none)
    plus, when given, `segment_ids_BxT` (a query sees keys of its own segment; 0 = padding)."""
    if impl == "splash":
        reason = splash_unsupported(q_BxTxHxK, k_BxSxGxK, mask_Bx1xTxS)
        if reason is None:
            return splash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                    segment_ids_BxT=segment_ids_BxT, interpret=interpret)
        _warn_once(f"Splash attention cannot run here ({reason}); using the XLA attention.")
        impl = "xla"
    if impl == "blockwise" and mask_Bx1xTxS is None and (
            not causal or q_BxTxHxK.shape[1] == k_BxSxGxK.shape[1]):
        return blockwise_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                   segment_ids_BxT=segment_ids_BxT)
    if mask_Bx1xTxS is None and segment_ids_BxT is not None:
        mask_Bx1xTxS = segment_mask(segment_ids_BxT, causal)
    is_causal = causal and mask_Bx1xTxS is None
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK,
                                                mask=mask_Bx1xTxS, is_causal=is_causal,
                                                implementation="cudnn")
        except Exception as e:  # noqa: BLE001 - any refusal by cuDNN means: use XLA
            _warn_once(f"cuDNN attention cannot run here ({str(e).splitlines()[0][:200]}); "
                       "using the XLA attention.")
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_Bx1xTxS,
                                        is_causal=is_causal, implementation="xla")


def segment_mask(segment_ids_BxT: jax.Array, causal: bool) -> jax.Array:
    """Boolean [B, 1, T, T]: same segment, not padding, and (causal) not in the future."""
    seg = segment_ids_BxT
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    if causal:
        T = seg.shape[1]
        mask = mask & (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])
    return mask[:, None]


# ------------------------------------------------------------------------------------- splash

SPLASH_BLOCK = 128


def splash_unsupported(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array,
                       mask_Bx1xTxS: jax.Array | None) -> str | None:
    """Why the splash kernel cannot take these inputs, or None when it can."""
    T, S = q_BxTxHxK.shape[1], k_BxSxGxK.shape[1]
    if mask_Bx1xTxS is not None:
        return "an explicit mask (decoding with a cache)"
    if T != S:
        return f"query length {T} != key length {S}"
    if T % SPLASH_BLOCK:
        return f"sequence length {T} is not a multiple of {SPLASH_BLOCK}"
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: F401
            splash_attention_kernel)
    except ImportError as e:
        return f"the Pallas splash kernel is not importable: {e}"
    from jaxlm.sharding import current_mesh, logical_to_spec
    mesh = current_mesh()
    if mesh is not None and mesh.size > 1:
        q_spec = logical_to_spec(("batch", None, "act_heads", None), shape=q_BxTxHxK.shape)
        kv_spec = logical_to_spec(("batch", None, "act_kv_heads", None), shape=k_BxSxGxK.shape)
        if q_spec[2] != kv_spec[2]:
            return (f"query heads are sharded as {q_spec[2]} but key/value heads as {kv_spec[2]} "
                    "(the tensor axis must divide model.num_kv_heads)")
    return None


@functools.lru_cache(maxsize=32)
def _splash_kernel(T: int, heads: int, causal: bool, mqa: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    one = sm.CausalMask((T, T)) if causal else sm.FullMask((T, T))
    mask = sm.MultiHeadMask([one] * heads)
    make = sk.make_splash_mqa if mqa else sk.make_splash_mha
    return make(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxT, *, causal: bool, interpret: bool):
    """Splash on one device's shard: [B, T, H, K] in, [B, T, H, K] out."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    B, T, H, K = q_BxTxHxK.shape
    G = k_BxSxGxK.shape[2]
    q = jnp.transpose(q_BxTxHxK * (K ** -0.5), (0, 2, 1, 3)).astype(k_BxSxGxK.dtype)
    k = jnp.transpose(k_BxSxGxK, (0, 2, 1, 3))
    v = jnp.transpose(v_BxSxGxK, (0, 2, 1, 3))
    segs = None if seg_BxT is None else sk.SegmentIds(q=seg_BxT, kv=seg_BxT)
    if G == H:
        kernel = _splash_kernel(T, H, causal, False, interpret)
        out_BxHxTxK = jax.vmap(kernel)(q, k, v, segs)
    else:  # grouped-query: one multi-query kernel per key/value head
        R = H // G
        kernel = _splash_kernel(T, R, causal, True, interpret)
        q_g = q.reshape(B, G, R, T, K)
        per_group = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over groups
        out = jax.vmap(per_group)(q_g, k, v, segs)
        out_BxHxTxK = out.reshape(B, H, T, K)
    return jnp.transpose(out_BxHxTxK, (0, 2, 1, 3)).astype(q_BxTxHxK.dtype)


def splash_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool, segment_ids_BxT: jax.Array | None,
                     interpret: bool = False) -> jax.Array:
    """The splash kernel over the active mesh: shard_map with batch / head shardings from the
    logical rules (sequence unsharded), so every device runs the kernel on its own rows/heads."""
    from jaxlm.sharding import current_mesh, logical_to_spec

    local = functools.partial(_splash_local, causal=causal, interpret=interpret)
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return local(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, segment_ids_BxT)
    q_spec = logical_to_spec(("batch", None, "act_heads", None), shape=q_BxTxHxK.shape)
    kv_spec = logical_to_spec(("batch", None, "act_kv_heads", None), shape=k_BxSxGxK.shape)
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    if segment_ids_BxT is None:
        fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh,
                           in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False)
        return fn(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)
    return fn(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, segment_ids_BxT)
