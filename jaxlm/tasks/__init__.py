"""Tasks: what a model is trained to do (loss, head, data, evaluation, what "best" means).

`TASKS` maps `train.task` names to Task classes; `task_for(name)` looks one up with a clear error.
A new kind of training registers a `Task` subclass here and reuses the trainer and the evaluator.
"""
from __future__ import annotations

from jaxlm.tasks.base import Task, unknown_task
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.tasks.generative import GenerativeTask
from jaxlm.tasks.language_model import CausalLMTask, MaskedLMTask
from jaxlm.tasks.losses import (LOSSES, LossFn, classification_loss, cross_entropy_and_hit,
                                token_loss)

__all__ = ["TASKS", "Task", "CausalLMTask", "MaskedLMTask", "ClassificationTask", "GenerativeTask",
           "task_for",
           "LOSSES", "LossFn", "token_loss", "classification_loss", "cross_entropy_and_hit"]

TASKS: dict[str, type[Task]] = {t.name: t for t in (CausalLMTask, MaskedLMTask,
                                                    ClassificationTask, GenerativeTask)}


def task_for(name: str) -> type[Task]:
    """The Task class registered under `name` (ConfigError naming the choices otherwise)."""
    if name not in TASKS:
        raise unknown_task(name, list(TASKS))
    return TASKS[name]
