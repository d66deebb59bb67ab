"""`jaxlm finetune`: supervised fine-tuning (sequence classification, or generative: a causal LM
taught to write each record's target), from scratch or from a pretrained backbone (`finetune.init_from`: a pretraining run or a Hugging Face checkpoint).

The same trainer as pretraining with another task: validation runs during training, the best
checkpoint by `finetune.best_metric` is kept in RUN_DIR/best and used for the final reports.
"""
from __future__ import annotations

from typing import Any, Iterable

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.train.fit import train, with_task
from jaxlm.train.trainer import Hook

FINETUNE_TASKS = ("classification", "generative")


def not_a_finetune_task(task: str) -> ConfigError:
    """The error for a pretraining task given to `jaxlm finetune`."""
    return ConfigError(f"train.task={task} is a pretraining task, which `jaxlm finetune` cannot "
                       f"train: it trains {' or '.join(FINETUNE_TASKS)}. Use `jaxlm pretrain` for "
                       f"{task} language modelling, or set train.task to {FINETUNE_TASKS[0]} or "
                       f"{FINETUNE_TASKS[1]}.", culprit="train.task")


def finetune(cfg: Config, run_dir: str | None = None, *, overwrite: bool = False,
             show_progress: bool = True, hooks: Iterable[Hook] = (),
             peak_flops: float | None = None) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning); returns the run summary. A config left at the default
    train.task (causal) fine-tunes a classifier (as 0.1.0 did; the caller's config is not
    changed); masked language modelling is pretraining, refused here."""
    if cfg.train.task == "masked":
        raise not_a_finetune_task("masked")
    if cfg.train.task not in FINETUNE_TASKS:
        cfg = with_task(cfg, "classification")
    return train(cfg, run_dir, overwrite=overwrite, show_progress=show_progress, hooks=hooks,
                 peak_flops=peak_flops)
