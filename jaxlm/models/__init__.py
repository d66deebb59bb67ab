"""Models: a backbone plus a task head. Every model keeps its backbone under `.backbone`, so a
classifier can start from any pretraining checkpoint by copying that subtree."""
from __future__ import annotations

import jax
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.heads import ClassifierHead, LMHead, MLMHead
from jaxlm.models.transformer import Transformer

__all__ = ["CausalLM", "MaskedLM", "Classifier", "Transformer", "build_model"]


class CausalLM(nnx.Module):
    """Backbone + next-token head (GPT-2, Llama)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.backbone = Transformer(cfg, rngs)
        self.lm_head = LMHead(self.backbone.cfg, rngs)

    def __call__(self, tokens_BxT: jax.Array, **kw) -> jax.Array:
        """Logits [B, T, V] in float32. Keyword arguments go to `Transformer.__call__`."""
        return self.lm_head(self.backbone(tokens_BxT, **kw), self.backbone.embeddings)


class MaskedLM(nnx.Module):
    """Backbone + masked-token head (BERT)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.backbone = Transformer(cfg, rngs)
        self.mlm_head = MLMHead(self.backbone.cfg, rngs)

    def __call__(self, tokens_BxT: jax.Array, **kw) -> jax.Array:
        return self.mlm_head(self.backbone(tokens_BxT, **kw), self.backbone.embeddings)


class Classifier(nnx.Module):
    """Backbone + pooled classification head."""

    def __init__(self, cfg: ModelConfig, num_labels: int, rngs: nnx.Rngs, *, pooling: str = "first",
                 pooler: bool = False):
        self.backbone = Transformer(cfg, rngs)
        self.head = ClassifierHead(self.backbone.cfg, num_labels, rngs, pooling=pooling,
                                   pooler=pooler)

    def __call__(self, tokens_BxT: jax.Array, *, segment_ids_BxT: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None, examples_per_row: int = 0,
                 **kw) -> jax.Array:
        """Class logits [B, C] in float32; [B, K, C] for rows packed with K examples each
        (segment k + 1 of a row is example k; pass their `positions_BxT`)."""
        rngs = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
        x = self.backbone(tokens_BxT, segment_ids_BxT=segment_ids_BxT, dropout_rng=rngs[0], **kw)
        return self.head(x, segment_ids_BxT, rngs[1], examples_per_row)


def build_model(cfg: ModelConfig, task: str = "causal", *, seed: int = 0,
                num_labels: int = 0, pooling: str = "first", pooler: bool = False,
                **deprecated: str) -> nnx.Module:
    """Build an unsharded model (eager sharding off) for `task` (causal or generative: a causal
    LM; masked; classification); shard its state with `jaxlm.sharding`. `cfg` is validated first
    (`ModelConfig.validate`: a ConfigError names a bad field)."""
    if "objective" in deprecated:  # the old keyword
        from jaxlm.config import deprecation_notice
        deprecation_notice("build_model(objective=...)", "build_model(task=...)")
        task = deprecated.pop("objective")
    if deprecated:
        raise TypeError(f"build_model() got unexpected keyword arguments {sorted(deprecated)}")
    rngs = nnx.Rngs(seed)
    with nnx.use_eager_sharding(False):
        if task in ("causal", "generative"):  # generative fine-tuning trains a causal LM
            return CausalLM(cfg, rngs)
        if task == "masked":
            return MaskedLM(cfg, rngs)
        if task == "classification":
            return Classifier(cfg, num_labels, rngs, pooling=pooling, pooler=pooler)
    from jaxlm.config import CHOICES
    from jaxlm.errors import ConfigError
    raise ConfigError(f"Unknown task {task!r}: build_model builds one of "
                      f"{', '.join(CHOICES['train.task'])}.", culprit="train.task")
