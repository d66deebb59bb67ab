"""Run directories: self-describing folders that hold a run's config, tokenizer, metrics and
checkpoints. Rerunning the same command on the same folder resumes it."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from jaxlm.config import Config, config_from_dict, save_config, to_dict
from jaxlm.errors import CheckpointError, ConfigError

# Sections that must match for a run directory to be resumed with a config (mesh, step count,
# logging and evaluation cadence may change between sessions).
IDENTITY_KEYS = ("model", "data", "optim", "train.objective", "train.batch_size", "train.seed",
                 "train.grad_accum")


def resolve_run_dir(cfg: Config, run_dir: str | None) -> Path:
    """The run directory: --run-dir, else config run_dir, else runs/<name>."""
    return Path(run_dir or cfg.run_dir or f"runs/{cfg.name}")


def _pick(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def prepare_run_dir(cfg: Config, run_dir: Path, overwrite: bool = False) -> bool:
    """Create or check a run directory; returns True when it holds a run to resume.

    A directory holding a run with a different config is refused unless `overwrite`, so a finished
    run is never clobbered by accident.
    """
    cfg_path = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"Run directory '{run_dir}' exists and is a file. Choose another "
                          "--run-dir.", culprit=str(run_dir))
    if cfg_path.is_file():
        if overwrite:
            for name in ("checkpoints", "tensorboard", "metrics.jsonl", "summary.json",
                         "config.yaml", "tokenizer.json"):
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        else:
            old = yaml.safe_load(cfg_path.read_text()) or {}
            new = to_dict(cfg)
            diffs = [k for k in IDENTITY_KEYS if _pick(old, k) != _pick(new, k)]
            if diffs:
                raise ConfigError(
                    f"Run directory '{run_dir}' holds a run with a different config ({', '.join(diffs)} "
                    "differ), so it cannot be resumed with this one. Use a new --run-dir, rerun with "
                    "the original config to resume, or pass --overwrite to discard the old run.",
                    culprit=str(run_dir))
            if old != new:  # e.g. more steps: config.yaml always describes the latest invocation
                save_config(cfg, cfg_path)
            return (run_dir / "checkpoints").is_dir()
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"Run directory '{run_dir}' is not empty and is not a jaxlm run (no "
                          "config.yaml). Choose an empty or new --run-dir, or pass --overwrite.",
                          culprit=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg_path)
    return False


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a jaxlm run directory (no config.yaml). Pass "
                              "the --run-dir of a pretrain or finetune run.", culprit=str(run_dir))
    return config_from_dict(yaml.safe_load(path.read_text()) or {})


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write summary.json (dataclasses and numpy scalars made JSON-able)."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return float(o)


def write_model_spec(run_dir: Path, model: Any, objective: str, **head: Any) -> None:
    """The resolved model config and head, so inference and export need no other run or config."""
    spec = {"objective": objective, "model": dataclasses.asdict(model), "head": head}
    (run_dir / "model.json").write_text(json.dumps(spec, indent=2))


def read_model_spec(run_dir: str | Path) -> dict:
    """A run's model.json (objective, resolved model config, head)."""
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' has no model.json: it is not a finished jaxlm run "
                              "directory. Pass the --run-dir of a pretrain or finetune run.",
                              culprit=str(run_dir))
    return json.loads(path.read_text())
