"""Checking config values: a raw dict becomes a section dataclass key by key (unknown keys caught
with the closest valid key suggested, deprecated spellings renamed), every value checked against its
field's type and choices, and the helpers sections' own rules raise through. Each failure is a
ConfigError naming the key. Knows the dataclasses only through their fields and type hints."""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from typing import Any

from jaxlm.config_choices import CHOICES, choices
from jaxlm.errors import ConfigError

# Old spellings still read, each with a one-line notice on stderr (once per process): old -> new.
DEPRECATED_KEYS: dict[str, str] = {"train.objective": "train.task"}
_noticed: set[str] = set()

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def deprecation_notice(old: str, new: str) -> None:
    """Print `jaxlm: 'old' is deprecated; use 'new'.` on stderr, once per process per spelling."""
    if old not in _noticed:
        _noticed.add(old)
        sys.stderr.write(f"jaxlm: '{old}' is deprecated; use '{new}'.\n")


def bad_key(key: str, msg: str) -> None:
    """Raise `Config key 'key': msg` as a ConfigError naming `key`."""
    raise ConfigError(f"Config key '{key}': {msg}", culprit=key)


def check_folder_key(key: str, value: str) -> None:
    """A folder key (e.g. data.token_cache) must not name an existing file."""
    import os
    path = os.path.expanduser(value)
    if value and os.path.exists(path) and not os.path.isdir(path):
        bad_key(key, f"'{value}' is a file, not a folder. Give a folder path (created when "
                "missing), or leave it empty for the default.")


def require_positive(section: Any, prefix: str, keys: tuple[str, ...], *,
                     zero_ok: bool = False) -> None:
    """Each of `keys` of `section` must be positive (or >= 0 with `zero_ok`)."""
    for key in keys:
        value = getattr(section, key)
        if value < 0 or (value == 0 and not zero_ok):
            bad_key(f"{prefix}.{key}", f"must be {'>= 0' if zero_ok else 'positive'}, got {value}.")


def _unwrap_override(value: Any, hint: Any) -> Any:
    """A `--set` value (config_loading.Override): the YAML-parsed value, except that a str key
    given something YAML reads as a mapping, list, number or bool takes the text as typed."""
    if type(value).__name__ != "Override":
        return value
    args = typing.get_args(hint)
    if isinstance(value.value, str):
        return value.value  # YAML quoting and escapes apply: --set 'k="a\\nb"'
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)  # not list[str]
    if hint is str or (is_union and str in args and value.value is not None
                       and not isinstance(value.value, (bool, int, float))):
        return value.text
    return value.value


def template_fields(template: str, key: str) -> list[str]:
    """The record fields a `{field}` format template names (a ConfigError naming `key` for a
    template Python cannot format, e.g. an unclosed brace or a positional `{}`)."""
    import string
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        bad_key(key, f"{template!r} is not a valid template ({e}); name record fields in braces, "
                "e.g. 'Question: {question}\\nAnswer:', and write a literal brace as {{ or }}.")
    for name in names:
        if not name.isidentifier():
            bad_key(key, f"{template!r} has the placeholder {{{name}}}; placeholders name record "
                    "fields, e.g. {input}, and cannot be empty, indexed or carry conversions.")
    return names


def _number(path: str, value: Any) -> float | None:
    """A finite float for a number, or for a string in float notation (YAML 1.1 reads 3e-4 and
    1e3 as strings; users write them so); None for anything else. NaN and infinities are
    refused: no config value means them."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str):
        if not _FLOAT.fullmatch(value.strip()):
            return None
        value = value.strip()
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        bad_key(path, f"must be a finite number, got {value!r}.")
    return number


def _check_union(path: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return check_value(path, value, arg)
        except ConfigError as e:
            errors.append(e)
    raise errors[0]


def _check_container(path: str, value: Any, hint: Any, origin: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{path}' must be a section (a mapping of keys), got "
                              f"{value!r}. Write it as nested YAML keys, e.g. '{path}:\\n  key: value'.",
                              culprit=path)
        return build_section(hint, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key '{path}' must be a list, got {value!r}. Write it as a "
                              f"YAML list, e.g. --set {path}=[a,b].", culprit=path)
        (item,) = typing.get_args(hint) or (Any,)
        return [check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if not isinstance(value, dict):  # a dict
        raise ConfigError(f"Config key '{path}' must be a mapping, got {value!r}.", culprit=path)
    return _plain(value)


def _plain(value: Any) -> Any:
    """A free-form mapping's value with `--set a.b.c=v` overrides inside it (e.g.
    mesh.rules.embed=tensor) read as their YAML values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return _unwrap_override(value, Any)


def check_value(path: str, value: Any, hint: Any) -> Any:
    """Coerce `value` to `hint` where lossless (int -> float), else raise a ConfigError."""
    value = _unwrap_override(value, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _check_union(path, value, hint)
    if dataclasses.is_dataclass(hint) or origin in (list, dict) or hint is dict:
        return _check_container(path, value, hint, origin)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = None if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else (
            _number(path, value))  # a quoted "128" stays a string, as YAML wrote it
        if number is not None:  # 1e3 and 1000.0 are 1000; 2.5 is refused
            if not number.is_integer():
                bad_key(path, f"must be a whole number, got {value!r}.")
            return int(number)
    elif hint is float:
        number = _number(path, value)
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    tname = getattr(hint, "__name__", str(hint))
    raise ConfigError(
        f"Config key '{path}' must be of type {tname}, got {value!r} ({type(value).__name__}). "
        f"Fix the value in the YAML file or pass e.g. --set {path}=<{tname}>.", culprit=path)


def _current_key(raw: dict, key: str, value: Any, path: str) -> tuple[str, str]:
    """(key, path) with a deprecated spelling renamed, after a notice."""
    if path not in DEPRECATED_KEYS:
        return key, path
    new_path = DEPRECATED_KEYS[path]
    deprecation_notice(path, new_path)
    key = new_path.rsplit(".", 1)[-1]
    if key in raw and raw[key] != value:
        raise ConfigError(f"Config keys '{path}' (deprecated) and '{new_path}' disagree "
                          f"({value!r} vs {raw[key]!r}). Keep only '{new_path}'.",
                          culprit=new_path)
    return key, new_path


def build_section(cls: type, raw: dict, prefix: str = "") -> Any:
    """The section dataclass `cls` (at key path `prefix`) from a raw dict, every key checked."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        key, path = _current_key(raw, key, value, f"{prefix}.{key}" if prefix else str(key))
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            close = difflib.get_close_matches(path, valid, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key '{path}'.{hint} Valid keys here: "
                              f"{', '.join(valid)}.", culprit=path)
        kwargs[key] = check_value(path, value, hints[key])
    obj = cls(**kwargs)
    for name in names:
        path = f"{prefix}.{name}" if prefix else name
        check_choice(path, getattr(obj, name))
    return obj


def check_choice(path: str, value: Any) -> None:
    """A choice key's value must be one of `choices(path)`."""
    if path not in CHOICES or value is None:
        return
    if isinstance(value, list):  # a list of choices, e.g. logging.trackers
        for item in value:
            check_choice(path, item)
        return
    allowed = choices(path)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        extra = (" Register your own with jaxlm.models.attention.register_attention(name, fn)."
                 if path == "model.attention_impl" else "")
        raise ConfigError(f"Config key '{path}' is {value!r}, which is not one of "
                          f"{', '.join(allowed)}.{hint}{extra}", culprit=path)


def check_fields(section: Any, prefix: str) -> None:
    """Type and choice checks of a section's own keys (sub-sections validate themselves)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        path = f"{prefix}.{f.name}" if prefix else f.name
        value, hint = getattr(section, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"Config key '{path}' must be a {hint.__name__}, got "
                                  f"{value!r}.", culprit=path)
            continue
        checked = check_value(path, value, hint)
        if hint in (int, float):  # a number typed as 3e-4 or 1e3 is stored as the number
            setattr(section, f.name, checked)
        check_choice(path, value)


class _Section:
    """What every config section shares: `validate()`, the same checks for a config built in
    Python as for one read from YAML (types, choices, then the section's own rules)."""

    _section = ""  # the section's key path in a Config ("model", "data.tokenizer", ...)

    def validate(self) -> None:
        """Raise a ConfigError naming the first bad key (its type, its choices, or a rule
        between keys); return None when the section is valid."""
        check_fields(self, self._section)
        self._check_rules()

    def _check_rules(self) -> None:
        """Checks between the section's keys (subclasses)."""
