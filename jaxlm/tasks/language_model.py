"""Language-model pretraining tasks: causal (next token) and masked (BERT) LM."""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import jax

from jaxlm.config import Config, ModelConfig
from jaxlm.data.sources import Source
from jaxlm.errors import ConfigError
from jaxlm.tasks.base import Task
from jaxlm.tasks.losses import token_loss


class CausalLMTask(Task):
    """Predict every next token; validation reports loss, perplexity and token accuracy."""

    name: ClassVar[str] = "causal"

    @classmethod
    def open_sources(cls, cfg: Config) -> dict[str, Source]:
        from jaxlm.data.lm_data import load_lm_sources
        train, validation = load_lm_sources(cfg)
        return {"train": train, "validation": validation}

    def loss(self, model: Any, batch: dict, dropout_rng: jax.Array | None):
        return token_loss(model, batch, dropout_rng)

    def tokenizer_texts(self, source: Source) -> Iterator[str]:
        from jaxlm.data.lm_data import tokenizer_texts
        return tokenizer_texts(source)

    def train_batches(self, cfg: Config, tokenizer: Any, sources: dict[str, Source], *,
                      process_index: int = 0, process_count: int = 1):
        from jaxlm.data.lm_data import lm_train_batches
        return lm_train_batches(cfg, tokenizer, sources["train"], process_index=process_index,
                                process_count=process_count)

    def eval_batches(self, cfg: Config, tokenizer: Any, source: Source, *, batch_size: int = 0,
                     whole: bool = False, process_index: int = 0, process_count: int = 1
                     ) -> list[dict]:
        from jaxlm.data.lm_data import lm_eval_batches
        return lm_eval_batches(cfg, tokenizer, source, batch_size=batch_size,
                               max_batches=0 if whole else None, process_index=process_index,
                               process_count=process_count)

    def evaluate(self, evaluator: Any, params: Any, batches: list[dict]) -> dict[str, Any]:
        return evaluator.mean_metrics(params, batches)


class MaskedLMTask(CausalLMTask):
    """Predict masked tokens (80/10/10 corruption, `data.mask_prob`) with a bidirectional model."""

    name: ClassVar[str] = "masked"

    def check_model(self, model_cfg: ModelConfig) -> None:
        if model_cfg.causal:
            raise ConfigError("train.task: masked needs a bidirectional model, and this one is "
                              "causal. Use model.family: bert, or set model.causal: false.",
                              culprit="train.task")
