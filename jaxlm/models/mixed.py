"""Matmuls with a hand-written backward pass: compute-dtype inputs in both passes, float32
accumulation, outputs and weight gradients. Every dense layer and the tied LM head use them.

Mixed precision (`model.dtype: bfloat16`) keeps parameters (and the optimizer state) in float32 and
casts each matmul's inputs to bfloat16. A plain `dot_general(x_bf16, w_bf16,
preferred_element_type=f32)` gives float32 outputs, but its autodiff transposes then see a float32
cotangent and run the two backward matmuls in float32: two thirds of the matmul FLOPs at the slow
rate (on an AVX512-BF16 CPU; on TPU/GPU it also doubles their input bytes). `mixed_matmul` casts
the cotangent down first, so all three matmuls of a layer take bf16 inputs and accumulate in
float32; the weight gradient is returned in float32 (never rounded to bf16, unlike torch.autocast).

At float32 the casts vanish and the math is autodiff's; the gain is layout: written as these
einsums, XLA:CPU runs the weight-gradient matmuls in its fast library (YNNPACK) instead of the
transposed-operand Eigen path autodiff's dot transposes end up in (1.17x on the 6-layer GPT step).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_matmul(x_NxI: jax.Array, w: jax.Array, w_is_OxI: bool = False) -> jax.Array:
    """x [..., I] (compute dtype) @ w [I, O] (or w [O, I] with w_is_OxI, e.g. a tied embedding
    table) in the parameter dtype -> [..., O] float32."""
    return _fwd(x_NxI, w, w_is_OxI)[0]


def _fwd(x, w, w_is_OxI):
    w_low = w.astype(x.dtype)
    spec = "...i,oi->...o" if w_is_OxI else "...i,io->...o"
    y = jnp.einsum(spec, x, w_low, preferred_element_type=jnp.float32)
    return y, (x, w_low, jnp.zeros((), w.dtype))


def weight_grad(x_NxI: jax.Array, g_NxO: jax.Array) -> jax.Array:
    """x^T g [I, O] in float32, summed over all leading axes.

    With two or more leading axes ([B, T, I] activations) XLA:CPU lowers this contraction to a
    row-major transposed copy plus a plain matmul in its fast library, at bf16 too. With one
    (e.g. pooled [B, D] classifier inputs) it would give the transposed-operand matmul to Eigen,
    which has no bf16 x bf16 -> float32 kernel (it fails at run time): such small inputs are
    widened to float32 first on CPU.
    """
    if x_NxI.ndim < 3 and x_NxI.dtype != jnp.float32 and jax.default_backend() == "cpu":
        x_NxI, g_NxO = x_NxI.astype(jnp.float32), g_NxO.astype(jnp.float32)
    if _transpose_gradient_side(x_NxI.shape, g_NxO.shape):
        g_OxI = jnp.einsum("...o,...i->oi", g_NxO, x_NxI, preferred_element_type=jnp.float32)
        return jax.lax.optimization_barrier(g_OxI).T
    return jnp.einsum("...i,...o->io", x_NxI, g_NxO, preferred_element_type=jnp.float32)


def _transpose_gradient_side(x_shape: tuple[int, ...], g_shape: tuple[int, ...]) -> bool:
    """Whether `weight_grad` should contract as g^T x and transpose the [O, I] result.

    The contraction's left operand is the one XLA copies into transposed order: x [N, I] by
    default. When the layer narrows (I > O, e.g. an MLP's down projection) that copy is the
    widest activation of the layer, and XLA:CPU fuses it with the activation's producer into a
    slow strided loop; copying g [N, O] and then the [O, I] result moves fewer elements. The
    optimization barrier keeps XLA from folding the final transpose back into the contraction,
    which would restore the default order (benchmarks/profile_train_step.py: float32 step).
    """
    n, i, o = math.prod(x_shape[:-1]), x_shape[-1], g_shape[-1]
    return o * (n + i) < n * i


def _bwd(w_is_OxI, res, g):
    x, w_low, w_dtype = res
    g_low = g.astype(x.dtype)
    if w_is_OxI:
        dx = jnp.einsum("...o,oi->...i", g_low, w_low, preferred_element_type=jnp.float32)
        dw = weight_grad(g_low, x)  # [O, I]
    else:
        dx = jnp.einsum("...o,io->...i", g_low, w_low, preferred_element_type=jnp.float32)
        dw = weight_grad(x, g_low)
    return dx.astype(x.dtype), dw.astype(w_dtype.dtype)


mixed_matmul.defvjp(_fwd, _bwd)


def mixed_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                      preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    """`nnx.Linear(dot_general=...)`: its [..., I] x [I, O] contraction through `mixed_matmul`."""
    if dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2:
        return mixed_matmul(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs.astype(lhs.dtype), dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def promote_inputs_only(arrays: tuple, dtype: Any = None, inexact: bool = True) -> tuple:
    """`nnx.Linear(promote_dtype=...)`: cast the input to the compute dtype, keep the kernel and
    bias in their (float32) parameter dtype; `mixed_dot_general` casts the kernel itself."""
    x, *rest = arrays
    return (x if dtype is None or x is None else x.astype(dtype), *rest)
