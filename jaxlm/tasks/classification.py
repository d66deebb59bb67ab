"""Sequence classification: a pooled head over the backbone, judged by a classification report;
the best validation checkpoint (by `finetune.best_metric`) is kept and reported on test."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.data.sources import Source
from jaxlm.tasks.base import Task
from jaxlm.tasks.losses import classification_loss


@dataclass
class ClassificationTask(Task):
    """Labels for whole sequences (`labels` [B]); `class_names` fix the logit order."""

    name: ClassVar[str] = "classification"
    class_names: list[str] = field(default_factory=list)
    pooling: str = "first"
    pooler: bool = False
    best_metric: str | None = "accuracy"
    best_mode: str = "max"
    final_splits: tuple[str, ...] = ("validation", "test")
    finetunes: ClassVar[bool] = True
    vocab_logits: ClassVar[bool] = False

    @classmethod
    def open_sources(cls, cfg: Config) -> dict[str, Source]:
        """train / validation / test with one label set; without a validation split, the last
        `data.val_fraction` of train is held out (e.g. TREC)."""
        from jaxlm.data.classification import classification_sources
        from jaxlm.data.lm_data import holdout

        out = classification_sources(cfg)
        if "validation" not in out:
            out["train"], out["validation"] = holdout(out["train"], cfg.data.val_fraction)
        return out

    @classmethod
    def from_config(cls, cfg: Config, sources: dict[str, Source]) -> "ClassificationTask":
        ft = cfg.finetune
        return cls(list(sources["train"].label_names), ft.pooling, ft.pooler,
                   *ft.best("accuracy"))

    @classmethod
    def from_head(cls, head: dict, cfg: Config | None = None) -> "ClassificationTask":
        names = [str(n) for n in head.get("class_names")
                 or range(int(head.get("num_labels") or 0))]
        return cls(names, head.get("pooling", "first"), bool(head.get("pooler", False)))

    @property
    def head(self) -> dict[str, Any]:
        return {"num_labels": len(self.class_names), "class_names": self.class_names,
                "pooling": self.pooling, "pooler": self.pooler}

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.class_names), "pooling": self.pooling,
                "pooler": self.pooler}

    def loss(self, model: Any, batch: dict, dropout_rng: jax.Array | None):
        return classification_loss(model, batch, dropout_rng)

    def _common(self, cfg: Config, process_index: int, process_count: int, micro_batches: int
                ) -> dict[str, Any]:
        return dict(seq_len=cfg.data.seq_len, buckets=list(cfg.data.length_buckets) or None,
                    process_index=process_index, process_count=process_count,
                    pack=cfg.data.packs_examples,
                    row_multiple=_data_shards(cfg) * micro_batches)

    def train_batches(self, cfg: Config, tokenizer: Any, sources: dict[str, Source], *,
                      process_index: int = 0, process_count: int = 1):
        from jaxlm.data.classification import classification_dataset
        return classification_dataset(sources["train"], tokenizer,
                                      global_batch=cfg.train.batch_size,
                                      num_steps=cfg.train.steps, seed=cfg.train.seed,
                                      **self._common(cfg, process_index, process_count,
                                                     cfg.train.grad_accum))

    def eval_batches(self, cfg: Config, tokenizer: Any, source: Source, *, batch_size: int = 0,
                     whole: bool = False, process_index: int = 0, process_count: int = 1
                     ) -> list[dict]:
        from jaxlm.data.classification import classification_eval_batches
        size = batch_size or cfg.train.eval_rows
        return classification_eval_batches(source, tokenizer, global_batch=size,
                                           **self._common(cfg, process_index, process_count, 1))

    def evaluate(self, evaluator: Any, params: Any, batches: list[dict]) -> dict[str, Any]:
        """Classification report (accuracy, macro and per-class P/R/F1, confusion matrix, loss)
        over the rows that weigh; padding rows are dropped."""
        from jaxlm.metrics import classification_report

        logits = evaluator.outputs(params, batches)
        logits = logits.reshape(-1, logits.shape[-1])  # packed rows: [rows, K, C]
        labels = np.concatenate([b["labels"].reshape(-1) for b in batches])
        keep = np.concatenate([b["weights"].reshape(-1) for b in batches]) > 0
        logits, labels = logits[keep].astype(np.float64), labels[keep]
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        loss = float(-logp[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0
        return classification_report(labels, logits.argmax(-1), len(self.class_names),
                                     self.class_names, loss)


def _data_shards(cfg: Config) -> int:
    """How many ways the active mesh (`jaxlm.sharding.use_mesh`) splits a batch's rows; 1 with
    none (rows are then not placed over devices)."""
    from jaxlm.sharding import current_mesh, data_parallel_size

    mesh = current_mesh()
    return 1 if mesh is None else data_parallel_size(mesh, cfg.mesh.rules)
