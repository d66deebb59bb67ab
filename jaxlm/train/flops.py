"""FLOP counting for throughput and MFU.

Training FLOPs per token (the PaLM-paper convention, as in nanoGPT):
    6 * N_matmul + 12 * L * T * H * K
where N_matmul counts the parameters used in matrix multiplies (every [in, out] kernel, plus the
output projection onto the vocabulary: the tied embedding counts once as the LM head), the factor 6
is 2 FLOPs per multiply-add times 3 for the forward and the two backward matmuls, and the second
term is the attention score and value matmuls (QK^T and AV: 2 * 2 * T * H * K per token per layer,
times 3 for backward), without the causal-mask halving. Embedding lookups, norms and softmax are
not counted.

A classifier never projects onto the vocabulary, so its count leaves that projection out (its
own head, a pooler and a D x classes kernel, is too small to count). A weight that does not
train (LoRA's frozen base) needs no weight gradient: 4 FLOPs per multiply-add parameter instead
of 6, while LoRA's adapters (x A, then B) are matmul parameters trained in full.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from jaxlm.config import ModelConfig


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def matmul_params(cfg: ModelConfig, vocab_logits: bool = True) -> int:
    """Parameters that take part in matmuls per token (see module docstring); vocab_logits:
    whether the model projects onto the vocabulary (language models; not a classifier)."""
    c = cfg.resolved()
    attn = c.d_model * c.num_heads * c.head_dim * 2 + c.d_model * c.num_kv_heads * c.head_dim * 2
    mlp = c.d_model * c.d_ff * (3 if c.mlp == "swiglu" else 2)
    return c.num_layers * (attn + mlp) + (c.d_model * c.vocab_size if vocab_logits else 0)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, vocab_logits: bool = True,
                    frozen_matmul_params: int = 0, adapter_params: int = 0) -> float:
    """Training FLOPs per token (see module docstring): frozen_matmul_params of the matmul
    parameters get no weight gradient; adapter_params (LoRA's A and B) add their own matmuls."""
    c = cfg.resolved()
    return (6.0 * (matmul_params(c, vocab_logits) + adapter_params) - 2.0 * frozen_matmul_params
            + 12.0 * c.num_layers * seq_len * c.num_heads * c.head_dim)


TOKEN_EMBEDDING = ("backbone", "embeddings", "token", "embedding")


def frozen_and_adapter_params(trained: Any, frozen: Any, cfg: ModelConfig,
                              vocab_logits: bool = True) -> tuple[int, int]:
    """(frozen matmul parameters, LoRA adapter parameters) of a step's (trained, frozen) plain
    parameter trees (`StateLayout.split`): the frozen kernels, and the frozen token embedding
    when it is also the LM head (tied)."""
    frozen_flat, trained_flat = flatten_dict(frozen), flatten_dict(trained)
    frozen_matmul = sum(int(x.size) for p, x in frozen_flat.items() if p[-1] == "kernel")
    if vocab_logits and cfg.resolved().tie_embeddings and TOKEN_EMBEDDING in frozen_flat:
        frozen_matmul += int(frozen_flat[TOKEN_EMBEDDING].size)
    adapters = sum(int(x.size) for p, x in trained_flat.items() if p[-1] in ("lora_a", "lora_b"))
    return frozen_matmul, adapters


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
