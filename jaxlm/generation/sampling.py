"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

The settings are a frozen (hashable) dataclass so that jitted decode functions take them as a static
argument: one compilation per setting, and no sorting work when a filter is off.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxlm.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}. "
                              "Pass e.g. --temperature 0.8.", culprit="temperature")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}. Pass e.g. "
                              "--top-k 40.", culprit="top_k")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}. Pass e.g. "
                              "--top-p 0.9.", culprit="top_p")

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax decoding."""
        return self.temperature == 0.0


def filter_top_k(logits_BxV: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits of each row (ties with the k-th are kept), -inf elsewhere."""
    if k <= 0 or k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    return jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)


def filter_top_p(logits_BxV: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p.

    A token is kept when the probability mass strictly before it (in descending order) is below
    p, so the most likely token always survives; the set is cut back to a logit threshold.
    """
    if p >= 1.0:
        return logits_BxV
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < p
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)


def sample(logits_BxV: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    """Next-token ids [B] (int32)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if s.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / s.temperature
    logits_BxV = filter_top_k(logits_BxV, s.top_k)
    logits_BxV = filter_top_p(logits_BxV, s.top_p)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)
