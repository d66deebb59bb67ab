"""The `logging:` config section: which trackers receive the metrics (`jaxlm.train.trackers`) and
their W&B and MLflow settings. Re-exported by `jaxlm.config`."""
from __future__ import annotations

from dataclasses import dataclass, field

from jaxlm.config_checks import _Section


@dataclass
class WandbConfig(_Section):
    """Weights & Biases: a run named after the run directory, its files in <run>/trackers/wandb."""

    _section = "logging.wandb"

    project: str = "jaxlm"
    entity: str = ""  # empty: the account's default entity
    mode: str = "auto"  # online; offline (upload later: wandb sync); disabled; auto: $WANDB_MODE


@dataclass
class MlflowConfig(_Section):
    """MLflow: a server (http://host:5000), a database (sqlite:///F.db) or a folder (file:DIR)."""

    _section = "logging.mlflow"

    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else a folder, <run>/trackers/mlruns
    experiment: str = "jaxlm"


@dataclass
class LoggingConfig(_Section):
    """Trackers (`jaxlm.train.trackers`): metrics.jsonl is always written, as jaxlm reads it."""

    _section = "logging"

    trackers: list[str] = field(default_factory=lambda: ["tensorboard", "jsonl"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def _check_rules(self) -> None:
        self.wandb.validate()
        self.mlflow.validate()
