"""model.json, read with its shape and types checked: `read_model_spec(path)` returns
{"task", "model", "head"[, "lora"]} or raises a CheckpointError naming the file, what is wrong
and the fix (a torn or edited file must not surface as a JSONDecodeError, KeyError or TypeError
in generate, evaluate, predict, export or finetune.init_from). `jaxlm.run.Run` reads it here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxlm.config import ModelConfig
from jaxlm.errors import CheckpointError, ConfigError

TASKS = ("causal", "masked", "classification", "generative")


def read_model_spec(path: Path) -> dict:
    """model.json as {"task", "model", "head"} (runs written before 0.2 say "objective")."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError):
        spec = None
    if isinstance(spec, dict) and "task" not in spec and "objective" in spec:
        spec["task"] = spec.pop("objective")
    problem = _problem(spec)
    if problem is None:
        try:
            spec_model_config(spec)
        except ConfigError as e:
            problem = f"its model section is not valid ({e})"
    if problem is not None:
        raise CheckpointError(f"'{path}' is damaged: {problem}. jaxlm wrote it when the run "
                              "trained; restore it from a backup, or retrain (or convert) into a "
                              "new --run.", culprit=str(path))
    return spec


def spec_model_config(spec: dict) -> ModelConfig:
    """The resolved ModelConfig of a model.json spec, every key and type checked."""
    from jaxlm.config_checks import build_section

    return build_section(ModelConfig, spec["model"], "model").resolved()


def _problem(spec: Any) -> str | None:
    """What is wrong with the shape of a model.json (None: task, model and head are there)."""
    if spec is None:
        return "it is not valid JSON (torn or edited by hand)"
    if not isinstance(spec, dict):
        return f"it holds a JSON {type(spec).__name__} instead of an object"
    if spec.get("task") not in TASKS:
        got = f"task {spec['task']!r}" if "task" in spec else "no task"
        return f"it has {got} (one of {', '.join(TASKS)} expected)"
    if not isinstance(spec.get("model"), dict):
        return "its model section is missing or not an object"
    for key in ("head", "lora"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            return f"its {key} section is not an object"
    return None
