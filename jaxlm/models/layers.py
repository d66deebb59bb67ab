"""Transformer building blocks: dense layers, norms, rotary embeddings, attention, MLPs.

Shapes are written as suffixes: B batch, T query length, S key length, D model width, H query heads,
G key/value heads, K head width, F feed-forward width, V vocabulary.
Parameters carry logical axis names in their `logical_axes` metadata (see `jaxlm.sharding`);
nothing here names a mesh axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.attention import attend, choose_impl
from jaxlm.models.mixed import mixed_dot_general, promote_inputs_only
from jaxlm.sharding import shard

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype_name(cfg: ModelConfig) -> str:
    """The compute dtype's name; `auto` is bfloat16 (mixed precision: float32 parameters,
    optimizer state, norms, softmax and loss) on TPU and GPU, float32 on CPU."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def dtypes(cfg: ModelConfig) -> tuple[jnp.dtype, jnp.dtype]:
    """(compute dtype, parameter dtype)."""
    return DTYPES[compute_dtype_name(cfg)], DTYPES[cfg.param_dtype]


def dense(cfg: ModelConfig, d_in: int, d_out: int, names: tuple[str | None, str | None],
          rngs: nnx.Rngs, *, use_bias: bool | None = None, std: float | None = None) -> nnx.Linear:
    """A Linear layer with logical axis names on its kernel [d_in, d_out] and bias [d_out]."""
    dtype, param_dtype = dtypes(cfg)
    init = nnx.initializers.normal(std if std is not None else cfg.init_std)
    # jaxlm.models.mixed: compute-dtype inputs in both passes, float32 outputs and weight grads
    return nnx.Linear(
        d_in, d_out, use_bias=cfg.use_bias if use_bias is None else use_bias,
        dtype=dtype, param_dtype=param_dtype,
        kernel_init=init, kernel_metadata={"logical_axes": names},
        bias_metadata={"logical_axes": (names[1],)},
        preferred_element_type=jnp.float32 if dtype != jnp.float32 else None,
        dot_general=mixed_dot_general, promote_dtype=promote_inputs_only, rngs=rngs)


class Norm(nnx.Module):
    """LayerNorm or RMSNorm computed in float32, returned in the compute dtype. LayerNorm has a bias
    only when the model does (`use_bias`), as in nanoGPT's bias=False."""

    def __init__(self, cfg: ModelConfig, dim: int, rngs: nnx.Rngs):
        _, param_dtype = dtypes(cfg)
        self.out_dtype = dtypes(cfg)[0]
        meta = dict(scale_metadata={"logical_axes": ("norm",)})
        if cfg.norm == "rmsnorm":
            self.norm = nnx.RMSNorm(dim, epsilon=cfg.norm_eps, dtype=jnp.float32,
                                    param_dtype=param_dtype, rngs=rngs, **meta)
        else:
            self.norm = nnx.LayerNorm(
                dim, epsilon=cfg.norm_eps, dtype=jnp.float32, param_dtype=param_dtype,
                use_bias=cfg.use_bias, use_fast_variance=False,
                bias_metadata={"logical_axes": ("norm",)}, rngs=rngs, **meta)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x.astype(jnp.float32)).astype(self.out_dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> jax.Array:
    """Rotary inverse frequencies [K/2]. `scaling` (Hugging Face's rope_parameters keys) stretches
    them for longer contexts: "linear" divides all by `factor`; "llama3" (Llama 3.1+) divides the
    low frequencies and interpolates the middle band."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
        lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * jnp.pi / inv_freq
        scaled = jnp.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        middle = (wavelen >= old / hi) & (wavelen <= old / lo)
        return jnp.where(middle, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv_freq


def rope_tables(positions_BxT: jax.Array, head_dim: int, theta: float,
                scaling: dict | None = None) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, K/2] for rotary embeddings at the given positions."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles_BxTxK2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles_BxTxK2), jnp.sin(angles_BxTxK2)


def apply_rope(x_BxTxNxK: jax.Array, cos_BxTxK2: jax.Array, sin_BxTxK2: jax.Array) -> jax.Array:
    """Rotate halves (the Llama / Hugging Face convention), in float32."""
    x = x_BxTxNxK.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos_BxTxK2[:, :, None, :], sin_BxTxK2[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxK.dtype)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; identity when rng is None or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
    """Identity whose gradient is computed once and stored (an optimization barrier).

    Wrapped around the residual stream at every residual add: without it XLA:CPU fuses the stream's
    gradient, a chain of adds through all later layers, into each of its consumers and recomputes
    it there (quadratic in depth; ~20% of a 6-layer step). The barrier only survives to fusion when
    the `cse_barrier_expander` pass is off, which `jaxlm.train.steps` does on CPU; elsewhere it is a
    no-op.
    """
    return x


def _materialize_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return x, None


def _materialize_bwd(_: None, g: jax.Array) -> tuple[jax.Array]:
    return (jax.lax.optimization_barrier(g),)


materialize_grad.defvjp(_materialize_fwd, _materialize_bwd)


def attention_impl(cfg: ModelConfig) -> str:
    """The registered attention to run (`jaxlm.models.attention`): `auto` resolved per backend and
    dtype (xla, blockwise, cudnn or splash), other names as they are."""
    return choose_impl(cfg.attention_impl, dtypes(cfg)[0])


class Attention(nnx.Module):
    """Multi-head attention with grouped-query heads and optional rotary embeddings."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        H, G, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
        self.q_proj = dense(cfg, D, H * K, ("embed", "heads"), rngs)
        self.k_proj = dense(cfg, D, G * K, ("embed", "kv_heads"), rngs)
        self.v_proj = dense(cfg, D, G * K, ("embed", "kv_heads"), rngs)
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5  # GPT-2 residual scaling
        self.o_proj = dense(cfg, H * K, D, ("heads", "embed"), rngs, std=out_std)

    def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxS: jax.Array | None,
                 rope: tuple[jax.Array, jax.Array] | None, rng: jax.Array | None = None,
                 kv_BxSxGxK: tuple[jax.Array, jax.Array] | None = None,
                 cache_index: jax.Array | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Returns the output and this call's (key, value) for callers that cache them.

        `mask_Bx1xTxS`: a boolean mask (decoding); None for plain causal (model.causal) or full
        attention; or segment ids [B, T] (0 = padding), from which the attention function
        (`model.attention_impl`, see `jaxlm.models.attention.AttentionFn`) builds its mask.

        `kv_BxSxGxK`, when given, replaces the keys/values computed from x. With `cache_index` it is
        a fixed-size decoding cache instead: this call's keys/values are written at slots
        cache_index..cache_index+T-1, attention runs over all S slots (the mask hides unwritten
        ones), and the updated cache is returned in place of this call's (key, value).
        """
        cfg = self.cfg
        B, T, _ = x_BxTxD.shape
        q = self.q_proj(x_BxTxD).reshape(B, T, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x_BxTxD).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x_BxTxD).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
        q = shard(q, ("batch", "length", "act_heads", None))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        new_kv = (k, v)
        if kv_BxSxGxK is not None and cache_index is not None:
            at = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(kv_BxSxGxK[0], k.astype(kv_BxSxGxK[0].dtype), at)
            v = jax.lax.dynamic_update_slice(kv_BxSxGxK[1], v.astype(kv_BxSxGxK[1].dtype), at)
            new_kv = (k, v)
        elif kv_BxSxGxK is not None:
            k, v = kv_BxSxGxK
        dtype = dtypes(cfg)[0]
        q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
        segment_ids_BxT = None
        if mask_Bx1xTxS is not None and mask_Bx1xTxS.ndim == 2:  # segment ids
            segment_ids_BxT, mask_Bx1xTxS = mask_Bx1xTxS, None
        out = attend(q, k, v, mask_Bx1xTxS=mask_Bx1xTxS, causal=bool(cfg.causal),
                     segment_ids_BxT=segment_ids_BxT, impl=attention_impl(cfg))
        out = dropout(out, cfg.dropout, rng)
        out = shard(out, ("batch", "length", "act_heads", None))
        return self.o_proj(out.reshape(B, T, cfg.num_heads * cfg.head_dim)), new_kv


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, `jax.nn.gelu(approximate=False)`, whose backward pass keeps only the
    input: autodiff would store erfc's intermediate terms for the backward pass as well, three
    [tokens, d_ff] buffers per layer besides the input, and XLA writes each one out in the
    forward pass. Recomputing the derivative from the input in the backward pass is cheaper than
    writing, keeping and reading them; on CPU the step's temporary buffer, faulted in every
    step, shrinks by that much (tests/test_models.py checks it; README, "exact GELU")."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.nn.gelu(x, approximate=False), x


def _gelu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    # the barrier keeps XLA from merging this recomputation with the forward pass's (CSE),
    # which would keep the forward's intermediate terms alive until now after all
    xf = jax.lax.optimization_barrier(x).astype(jnp.float32)
    cdf = 0.5 * jax.lax.erfc(-xf * np.float32(np.sqrt(0.5)))
    pdf = jnp.exp(-0.5 * xf * xf) * np.float32(1 / np.sqrt(2 * np.pi))
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


class MLP(nnx.Module):
    """GELU MLP (GPT-2, BERT) or SwiGLU (Llama)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        D, F = cfg.d_model, cfg.d_ff
        if cfg.mlp == "swiglu":
            self.gate_proj = dense(cfg, D, F, ("embed", "mlp"), rngs)
        self.up_proj = dense(cfg, D, F, ("embed", "mlp"), rngs)
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.down_proj = dense(cfg, F, D, ("mlp", "embed"), rngs, std=out_std)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.cfg.activation]
        h_BxTxF = self.up_proj(x_BxTxD)
        if self.cfg.mlp == "swiglu":
            h_BxTxF = act(self.gate_proj(x_BxTxD)) * h_BxTxF
        else:
            h_BxTxF = act(h_BxTxF)
        h_BxTxF = shard(h_BxTxF, ("batch", "length", "act_mlp"))
        return self.down_proj(h_BxTxF.astype(dtypes(self.cfg)[0]))


def attention_mask(segment_ids_BxT: jax.Array, causal: bool,
                   kv_segment_ids_BxS: jax.Array | None = None,
                   q_positions_BxT: jax.Array | None = None,
                   kv_positions_BxS: jax.Array | None = None) -> jax.Array:
    """Boolean mask [B, 1, T, S]: a query sees keys of its own segment (0 = padding, seen by
    nobody), and with `causal` only keys at or before its own position."""
    kv_seg = segment_ids_BxT if kv_segment_ids_BxS is None else kv_segment_ids_BxS
    mask = (segment_ids_BxT[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
    if causal:
        T, S = segment_ids_BxT.shape[1], kv_seg.shape[1]
        q_pos = jnp.arange(T)[None, :] if q_positions_BxT is None else q_positions_BxT
        k_pos = jnp.arange(S)[None, :] if kv_positions_BxS is None else kv_positions_BxS
        mask = mask & (q_pos[:, :, None] >= k_pos[:, None, :])
    return mask[:, None, :, :]
