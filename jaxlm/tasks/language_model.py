"""Language-model pretraining tasks: causal (next token) and masked (BERT) LM."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterator

import jax

from jaxlm.config import Config, ModelConfig
from jaxlm.data.sources import Source
from jaxlm.errors import ConfigError
from jaxlm.tasks.base import Task
from jaxlm.tasks.losses import token_loss

# train.eval_batches: 0 validates on this many training rows' worth (1 / AUTO_EVAL_SHARE of them)
AUTO_EVAL_SHARE = 10


class CausalLMTask(Task):
    """Predict every next token; validation reports loss, perplexity and token accuracy."""

    name: ClassVar[str] = "causal"
    # validation during training may be a sample (train.eval_batches); the run ends with the whole
    final_splits: tuple[str, ...] = ("validation",)

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

    def batches_of_one_shape(self, cfg: Config) -> bool:
        return True  # seq_len windows or packed rows

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

    def validation_batches(self, cfg: Config, tokenizer: Any, source: Source, *,
                           process_index: int = 0, process_count: int = 1) -> list[dict]:
        """`train.eval_batches` batches; by default (0) the first rows of the split, as many as
        a tenth of the rows trained on between two validations: a forward pass costs about a
        third of a training step, so validating costs about 1/30 of the training. The final
        report scores the whole split (`final_splits`)."""
        from jaxlm.data.lm_data import lm_eval_batches
        t = cfg.train
        cap = t.eval_batches
        if cap == 0 and t.eval_every:
            cap = max(1, math.ceil(t.eval_every * t.batch_size / AUTO_EVAL_SHARE / t.eval_rows))
        return lm_eval_batches(cfg, tokenizer, source, max_batches=max(cap, 0),
                               process_index=process_index, process_count=process_count)

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
