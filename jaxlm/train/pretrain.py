"""`jaxlm pretrain`: language-model pretraining (train.task causal or masked) from a config."""
from __future__ import annotations

from typing import Any, Iterable

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.train.fit import train
from jaxlm.train.trainer import Hook

PRETRAIN_TASKS = ("causal", "masked")


def pretrain(cfg: Config, run_dir: str | None = None, *, overwrite: bool = False,
             show_progress: bool = True, hooks: Iterable[Hook] = (),
             peak_flops: float | None = None) -> dict[str, Any]:
    """Pretrain (or resume pretraining) a language model; returns the run summary."""
    if cfg.train.task not in PRETRAIN_TASKS:
        raise ConfigError(f"train.task={cfg.train.task} is not a pretraining task: `jaxlm "
                          f"pretrain` trains {' or '.join(PRETRAIN_TASKS)}. Use `jaxlm finetune` "
                          "for classification and generative fine-tuning.", culprit="train.task")
    return train(cfg, run_dir, overwrite=overwrite, show_progress=show_progress, hooks=hooks,
                 peak_flops=peak_flops)
