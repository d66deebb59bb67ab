"""Scaled dot-product attention: a registry of attention functions, with the best built-in kernel
per backend and a clean fallback.

`model.attention_impl` names an entry of the registry. Built-ins:
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

Your own attention plugs in with `register_attention(name, fn)` and `model.attention_impl: name`;
`fn` follows `AttentionFn` (below). It is called inside the model's jitted code, once per layer.
"""
from __future__ import annotations

import difflib
import functools
import warnings
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from jaxlm.models.blockwise_attention import blockwise_attention

_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


class AttentionFn(Protocol):
    """The signature of an attention function (stable: jaxlm only ever adds keywords that have
    defaults, so accept `**kwargs` to stay forward compatible).

    `fn(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, causal, segment_ids_BxT, mask_Bx1xTxS) -> out_BxTxHxK`

    - `q_BxTxHxK`: queries, B rows, T query positions, H query heads of width K, in the model's
      compute dtype, not yet scaled: the function computes softmax(q k^T / sqrt(K)) v.
    - `k_BxSxGxK`, `v_BxSxGxK`: keys and values at S positions with G key/value heads; H is a
      multiple of G (grouped-query attention: query head h reads key/value head h // (H // G)).
    - `causal`: a query at position t sees only keys at positions <= t (T == S then).
    - `segment_ids_BxT`: None, or int ids of packed documents (T == S): a query sees only keys of
      its own segment, and id 0 (padding) is seen by no query. Combine it with `causal`.
    - `mask_Bx1xTxS`: None, or a boolean mask (True: may attend) that is the whole mask: causality
      and segments are already folded in (decoding with a key/value cache, where T != S). At most
      one of `segment_ids_BxT` and `mask_Bx1xTxS` is given. A function without a mask path can
      hand such calls to `xla_attention`.

    Returns `out_BxTxHxK` in the dtype of `q_BxTxHxK`. Rows of queries that see no key (padding)
    may hold anything finite; the loss ignores them.
    """

    def __call__(self, q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                 causal: bool, segment_ids_BxT: jax.Array | None,
                 mask_Bx1xTxS: jax.Array | None) -> jax.Array: ...


BUILTIN_ATTENTION = ("auto", "xla", "blockwise", "cudnn", "splash")
_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str, fn: AttentionFn | None = None, *, overwrite: bool = False
                       ) -> AttentionFn | Callable[[AttentionFn], AttentionFn]:
    """Register `fn` (see `AttentionFn`) under `name`, so that `model.attention_impl: name` uses
    it; returns `fn`. Without `fn`, a decorator: `@register_attention("mine")`. Built-in names
    cannot be replaced, and another name only with `overwrite=True`."""
    if fn is None:
        return lambda f: register_attention(name, f, overwrite=overwrite)
    if not isinstance(name, str) or not name:
        raise ValueError(f"an attention name is a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_attention({name!r}, fn): fn must be callable, got {fn!r}")
    if name in _REGISTRY and (name in BUILTIN_ATTENTION or not overwrite):
        what = "a built-in" if name in BUILTIN_ATTENTION else "already registered"
        raise ValueError(f"attention {name!r} is {what}; choose another name"
                         + ("" if name in BUILTIN_ATTENTION else " or pass overwrite=True") + ".")
    _REGISTRY[name] = fn
    return fn


def attention_names() -> tuple[str, ...]:
    """The names `model.attention_impl` accepts: the built-ins, then the registered ones."""
    return tuple(_REGISTRY)


def get_attention(name: str) -> AttentionFn:
    """The attention function registered as `name`; a ConfigError lists the choices."""
    if name not in _REGISTRY:
        from jaxlm.errors import ConfigError
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Config key 'model.attention_impl' is {name!r}, which is not one of "
                          f"{', '.join(_REGISTRY)}.{hint} Register your own with "
                          "jaxlm.models.attention.register_attention(name, fn).",
                          culprit="model.attention_impl")
    return _REGISTRY[name]


def choose_impl(requested: str, dtype: jnp.dtype, backend: str | None = None) -> str:
    """The registered attention to run for `requested` on this backend: `auto` and built-in
    kernels that cannot run on this backend resolve to another built-in; other names are
    returned as they are."""
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
    """Attention output [B, T, H, K] from the registered attention `impl` (`auto` and kernels
    that cannot run on this backend resolved by `choose_impl`). See `AttentionFn` for the
    arguments; `interpret` runs the splash kernel in Pallas interpret mode (tests on CPU)."""
    if impl == "splash" and interpret:
        return _splash(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                       segment_ids_BxT=segment_ids_BxT, mask_Bx1xTxS=mask_Bx1xTxS, interpret=True)
    return get_attention(choose_impl(impl, q_BxTxHxK.dtype))(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                               segment_ids_BxT=segment_ids_BxT, mask_Bx1xTxS=mask_Bx1xTxS)


def _auto(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, **kw) -> jax.Array:
    return get_attention(choose_impl("auto", q_BxTxHxK.dtype))(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK,
                                                               **kw)


def xla_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                  causal: bool, segment_ids_BxT: jax.Array | None = None,
                  mask_Bx1xTxS: jax.Array | None = None, implementation: str = "xla"
                  ) -> jax.Array:
    """The reference attention (`jax.nn.dot_product_attention`), an `AttentionFn` that takes
    every mask form: the fallback for kernels and for custom functions."""
    if mask_Bx1xTxS is None and segment_ids_BxT is not None:
        mask_Bx1xTxS = segment_mask(segment_ids_BxT, causal)
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_Bx1xTxS,
                                        is_causal=causal and mask_Bx1xTxS is None,
                                        implementation=implementation)


def _blockwise(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, causal, segment_ids_BxT=None,
               mask_Bx1xTxS=None, **_) -> jax.Array:
    if mask_Bx1xTxS is None and (not causal or q_BxTxHxK.shape[1] == k_BxSxGxK.shape[1]):
        return blockwise_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                   segment_ids_BxT=segment_ids_BxT)
    return xla_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                         segment_ids_BxT=segment_ids_BxT, mask_Bx1xTxS=mask_Bx1xTxS)


def _cudnn(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, **kw) -> jax.Array:
    kw.pop("interpret", None)
    try:
        return xla_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, implementation="cudnn", **kw)
    except Exception as e:  # noqa: BLE001 - any refusal by cuDNN means: use XLA
        _warn_once(f"cuDNN attention cannot run here ({str(e).splitlines()[0][:200]}); "
                   "using the XLA attention.")
    return xla_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, **kw)


def _splash(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, causal, segment_ids_BxT=None,
            mask_Bx1xTxS=None, interpret: bool = False, **_) -> jax.Array:
    reason = splash_unsupported(q_BxTxHxK, k_BxSxGxK, mask_Bx1xTxS)
    if reason is None:
        return splash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                segment_ids_BxT=segment_ids_BxT, interpret=interpret)
    _warn_once(f"Splash attention cannot run here ({reason}); using the XLA attention.")
    return xla_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                         segment_ids_BxT=segment_ids_BxT, mask_Bx1xTxS=mask_Bx1xTxS)


for _name, _fn in zip(BUILTIN_ATTENTION, (_auto, xla_attention, _blockwise, _cudnn, _splash)):
    register_attention(_name, _fn)


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
