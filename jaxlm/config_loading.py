"""Raw config dicts: reading a YAML file, applying `--set a.b=c` overrides, renaming deprecated
keys of a saved config. `jaxlm.config.config_from_dict` turns the result into a checked Config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jaxlm.config_checks import DEPRECATED_KEYS
from jaxlm.errors import ConfigError


@dataclass(frozen=True)
class Override:
    """A `--set` value: YAML-parsed, and as typed. A key of type str takes the text as typed, so
    `--set generative.prompt_template="Q: {question}"` is not read as a YAML mapping."""

    value: Any
    text: str


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=c` -> ('a.b', yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"Override '{item}' is not of the form key=value, e.g. "
                          f"--set train.steps=100.", culprit=item)
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist. Pass the path of a YAML file, e.g. "
                          f"--config configs/shakespeare_char.yaml.", culprit=str(p))
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file '{p}' is not valid YAML: {e}. Fix the syntax at the "
                          f"position shown.", culprit=str(p)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{p}' must hold a mapping of sections (model:, train:, "
                          f"...), got a {type(raw).__name__}.", culprit=str(p))
    return raw


def with_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """A copy of `raw` with each `a.b=c` override set."""
    raw = _deepcopy(raw)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_nested(raw, key, Override(value, item.split("=", 1)[1]))
    return raw


def migrate_raw(raw: dict) -> dict:
    """A copy of a raw config dict (e.g. an old run's config.yaml) with deprecated keys renamed
    (DEPRECATED_KEYS), silently: for comparing saved configs with new ones."""
    raw = _deepcopy(raw)
    for old, new in DEPRECATED_KEYS.items():
        *parents, leaf = old.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node.setdefault(new.rsplit(".", 1)[-1], node.pop(leaf))
    return raw


def _set_nested(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Cannot set '{dotted}': '{part}' is a value, not a section.",
                              culprit=dotted)
    node[parts[-1]] = value


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deepcopy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deepcopy(v) for v in raw]
    return raw
