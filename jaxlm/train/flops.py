"""FLOP counting for throughput and MFU.

Training FLOPs per token (the PaLM-paper convention, as in nanoGPT):
    6 * N_matmul + 12 * L * T * H * K
where N_matmul counts the parameters used in matrix multiplies (every [in, out] kernel, plus the
output projection onto the vocabulary: the tied embedding counts once as the LM head), the factor 6
is 2 FLOPs per multiply-add times 3 for the forward and the two backward matmuls, and the second
term is the attention score and value matmuls (QK^T and AV: 2 * 2 * T * H * K per token per layer,
times 3 for backward), without the causal-mask halving. Embedding lookups, norms and softmax are
not counted.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls per token (see module docstring)."""
    c = cfg.resolved()
    attn = c.d_model * c.num_heads * c.head_dim * 2 + c.d_model * c.num_kv_heads * c.head_dim * 2
    mlp = c.d_model * c.d_ff * (3 if c.mlp == "swiglu" else 2)
    return c.num_layers * (attn + mlp) + c.d_model * c.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (6 x matmul parameters + attention), for MFU."""
    c = cfg.resolved()
    return 6.0 * matmul_params(c) + 12.0 * c.num_layers * seq_len * c.num_heads * c.head_dim


def measure_peak_flops(dtype: str = "float32", n: int = 0, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on device 0: the practical peak MFU is measured against.

    n 0: 1024 on a CPU, whose matmul rate has levelled off by that size, so that every training
    run does not spend most of a second measuring it with larger products; 2048 elsewhere."""
    if not n:
        n = 1024 if jax.default_backend() == "cpu" else 2048
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[dtype]
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best
