"""What a task is: everything that differs between training a language model and a classifier.

A task bundles the model head, the loss, the training and evaluation data, the evaluation
metrics and what "best" means. The trainer (`jaxlm.train.fit`) and the evaluator
(`jaxlm.evaluation`) do the rest the same way for every task, so a new kind of training is a new
`Task` subclass registered in `jaxlm.tasks.TASKS`, not a new driver.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator

import jax
from flax import nnx

from jaxlm.config import Config, ModelConfig
from jaxlm.data.sources import Source
from jaxlm.errors import ConfigError


class Task(ABC):
    """Base class; subclasses set `name` and implement the abstract methods."""

    name: ClassVar[str] = ""
    # validation metric that picks the kept best checkpoint (None: keep no best checkpoint)
    best_metric: str | None = None
    best_mode: str = "max"
    # splits evaluated with the final (best) parameters when training ends
    final_splits: tuple[str, ...] = ()
    # starts from finetune.init_from (a pretrained checkpoint) when one is given
    finetunes: ClassVar[bool] = False
    # the model projects onto the vocabulary (a language model's head; FLOP counts for MFU)
    vocab_logits: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def open_sources(cls, cfg: Config) -> dict[str, Source]:
        """The dataset splits (at least "train"; "validation" and "test" when available)."""

    @classmethod
    def open_source(cls, cfg: Config, spec: str, split: str,
                    labels: list[str] | None = None) -> Source:
        """One split of a dataset spec given on the command line (`jaxlm evaluate --data`),
        read as this task reads its data."""
        from jaxlm.data.sources import SourceOptions, open_source
        return open_source(spec, split, SourceOptions.from_config(cfg.data), labels)

    @classmethod
    def from_config(cls, cfg: Config, sources: dict[str, Source]) -> "Task":
        """The task for a config and its opened sources."""
        return cls()

    @classmethod
    def from_head(cls, head: dict, cfg: Config | None = None) -> "Task":
        """The task of a trained run, from its model.json head (and config, when there is one)."""
        return cls()

    @property
    def head(self) -> dict[str, Any]:
        """The head settings saved in model.json (empty for language models)."""
        return {}

    def prepare(self, cfg: Config, tokenizer: Any, sources: dict[str, Source],
                pretrained: Any = None) -> None:
        """Look at the data once the tokenizer exists (and the pretrained checkpoint, when
        fine-tuning from one), before the run's model.json is written from `head`."""

    def check_model(self, model_cfg: ModelConfig) -> None:
        """Refuse a model this task cannot train (ConfigError)."""

    def build_model(self, model_cfg: ModelConfig, seed: int = 0) -> nnx.Module:
        """A fresh, unsharded model with this task's head."""
        from jaxlm.models import build_model
        return build_model(model_cfg, self.name, seed=seed, **self.head_kwargs())

    def head_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `build_model` for the head."""
        return {}

    @abstractmethod
    def loss(self, model: Any, batch: dict, dropout_rng: jax.Array | None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss sum, aux sums); see `jaxlm.tasks.losses`."""

    def tokenizer_texts(self, source: Source) -> Iterator[str]:
        """Texts a new tokenizer is trained on."""
        return source.texts()

    def batches_of_one_shape(self, cfg: Config) -> bool:
        """Whether every training batch has the same shapes: then several steps may run in one
        call of the compiled step (`train.steps_per_call`)."""
        return False

    @abstractmethod
    def train_batches(self, cfg: Config, tokenizer: Any, sources: dict[str, Source], *,
                      process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
        """This host's training batches, a checkpointable iterator source (`iter()` it)."""

    @abstractmethod
    def eval_batches(self, cfg: Config, tokenizer: Any, source: Source, *, batch_size: int = 0,
                     whole: bool = False, process_index: int = 0, process_count: int = 1
                     ) -> list[dict]:
        """Every example of `source` once, as fixed host batches (padding rows weigh 0); at most
        `train.eval_batches` batches when the config caps validation, unless `whole`."""

    def validation_batches(self, cfg: Config, tokenizer: Any, source: Source, *,
                           process_index: int = 0, process_count: int = 1) -> list[dict]:
        """The batches validated on during training (by default `eval_batches`)."""
        return self.eval_batches(cfg, tokenizer, source, process_index=process_index,
                                 process_count=process_count)

    @abstractmethod
    def evaluate(self, evaluator: Any, params: Any, batches: list[dict]) -> dict[str, Any]:
        """The evaluation report of `params` on `batches` (scalars are logged)."""


def unknown_task(name: str, known: list[str]) -> ConfigError:
    """The error for a task name that no registered task has."""
    return ConfigError(f"Unknown task {name!r}: jaxlm trains {', '.join(known)} (train.task).",
                       culprit="train.task")
