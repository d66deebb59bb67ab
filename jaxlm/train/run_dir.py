"""Run directories: self-describing folders that hold a run's config, tokenizer, metrics and
checkpoints. Rerunning the same command on the same folder resumes it."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from jaxlm.atomic import write_text_atomic
from jaxlm.config import Config, config_from_dict, migrate_raw, save_config, to_dict
from jaxlm.errors import CheckpointError, ConfigError

# Sections that must match for a run directory to be resumed with a config (mesh, step count,
# logging and evaluation cadence may change between sessions).
IDENTITY_KEYS = ("model", "data", "optim", "train.task", "train.batch_size", "train.seed",
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
            _clear_run(run_dir)
        else:
            old = migrate_raw(_read_yaml(cfg_path))  # train.objective -> train.task
            new = to_dict(cfg)
            diffs = [k for k in IDENTITY_KEYS if _pick(old, k) != _pick(new, k)]
            if diffs and not _has_checkpoint(run_dir):
                # a start that failed before its first checkpoint: nothing to lose, start again
                # (its tokenizer and model spec came from the old config, so they go too)
                from jaxlm.train.checkpoint import warn
                warn(f"'{run_dir}' holds a run with a different config that never saved a "
                     "checkpoint; starting it again with this config.")
                _clear_run(run_dir)
            elif diffs:
                raise ConfigError(
                    f"Run directory '{run_dir}' holds a run with a different config ({', '.join(diffs)} "
                    "differ), so it cannot be resumed with this one. Use a new --run-dir, rerun with "
                    "the original config to resume, or pass --overwrite to discard the old run.",
                    culprit=str(run_dir))
            else:
                if old != new:  # e.g. more steps: config.yaml describes the latest invocation
                    save_config(cfg, cfg_path)
                return (run_dir / "checkpoints").is_dir()
    elif (run_dir.is_dir() and any(p.suffix != ".tmp" for p in run_dir.iterdir())
          and not overwrite):  # (a .tmp file: a first write cut short)
        raise ConfigError(f"Run directory '{run_dir}' is not empty and is not a jaxlm run (no "
                          "config.yaml). Choose an empty or new --run-dir, or pass --overwrite.",
                          culprit=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg_path)
    return False


def _has_checkpoint(run_dir: Path) -> bool:
    return any(p.name.isdigit() for d in ("checkpoints", "best") if (run_dir / d).is_dir()
               for p in (run_dir / d).iterdir())


def _clear_run(run_dir: Path) -> None:
    """Remove what a run wrote (and nothing else in the folder): --overwrite, or a failed start."""
    for name in RUN_FILES + tuple(p.name for p in run_dir.glob("eval_*.json")):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


# What a run directory holds: nothing but training (and `--overwrite`) may replace these.
RUN_FILES = ("config.yaml", "model.json", "tokenizer.json", "summary.json", "metrics.jsonl",
             "hf_import.json", "checkpoints", "checkpoints.corrupt", "best", "tensorboard")


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and ((p / "checkpoints").is_dir()
                                               or (p / "model.json").is_file())


def check_output_path(path: str | Path, flag: str, *, folder: bool = False) -> None:
    """Refuse an output path that would overwrite part of an existing jaxlm run (its config,
    model, tokenizer, metrics or checkpoints), or a folder where a file is expected."""
    p = Path(path).absolute()
    if not folder and p.is_dir():
        raise ConfigError(f"{flag} '{path}' is a directory; give the path of a file to write.",
                          culprit=flag)
    if folder and p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} '{path}' is an existing file; give a folder to write into.",
                          culprit=flag)
    if folder and is_run_dir(p):
        raise ConfigError(f"{flag} '{path}' is a jaxlm run directory; writing there would "
                          "replace the run's own files. Choose another folder.", culprit=flag)
    for parent in p.parents:
        if is_run_dir(parent):
            part = p.relative_to(parent).parts[0]
            if part in RUN_FILES:
                raise ConfigError(f"{flag} '{path}' would overwrite '{part}' of the jaxlm run in "
                                  f"'{parent}'. Write the output somewhere else.", culprit=flag)
            return


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not readable YAML ({str(e).splitlines()[0]}): the run "
                              "directory is damaged. Restore config.yaml from a backup, or start "
                              "a new --run-dir.", culprit=str(path)) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' does not hold a config mapping: the run directory is "
                              "damaged. Restore config.yaml from a backup, or start a new --run-dir.",
                              culprit=str(path))
    return raw


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a jaxlm run directory (no config.yaml). Pass "
                              "the --run-dir of a pretrain or finetune run.", culprit=str(run_dir))
    try:
        return config_from_dict(_read_yaml(path))
    except ConfigError as e:
        raise CheckpointError(f"The config saved in '{path}' is not valid for this jaxlm ({e}). "
                              "It was written by another version or edited by hand.",
                              culprit=str(path)) from None


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write summary.json (dataclasses and numpy scalars made JSON-able). A resumed run (or a
    finished one run again, which only re-reports) adds the wall time of the summary it replaces
    and keeps its throughput when this invocation trained no step, so neither is lost."""
    path = run_dir / "summary.json"
    if summary.get("resumed_from") and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        summary = dict(summary)  # the caller's dict stays as it was
        if isinstance(old.get("wall_s"), (int, float)) and summary.get("wall_s") is not None:
            summary["wall_s"] += old["wall_s"]
        if summary.get("tokens_per_s") is None:
            summary["tokens_per_s"] = old.get("tokens_per_s")
    write_text_atomic(path, json.dumps(summary, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return float(o)


def write_model_spec(run_dir: Path, model: Any, objective: str, **head: Any) -> None:
    """The resolved model config and head, so inference and export need no other run or config."""
    spec = {"objective": objective, "model": dataclasses.asdict(model), "head": head}
    write_text_atomic(run_dir / "model.json", json.dumps(spec, indent=2))


def read_model_spec(run_dir: str | Path) -> dict:
    """A run's model.json (objective, resolved model config, head)."""
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' has no model.json: it is not a finished jaxlm run "
                              "directory. Pass the --run-dir of a pretrain or finetune run.",
                              culprit=str(run_dir))
    return json.loads(path.read_text())
