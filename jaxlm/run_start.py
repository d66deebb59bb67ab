"""The two questions `Run.prepare` asks of a run directory that holds a different config.

1. Is it only a start that never trained, so clearing it loses nothing? A start is exactly what
   `jaxlm.train.fit.train` writes before its first logged step: a config.yaml that jaxlm wrote (a
   complete resolved config), tokenizer.json, model.json, an empty checkpoints/ and best/, an
   empty metrics.jsonl, tensorboard/ event files holding no scalar, a LoRA run's base/, and
   `NAME.*.tmp` leftovers of those files' atomic writes. Anything else (a logged record, a checkpoint folder of any kind,
   checkpoints.corrupt/, a summary, a report, a file of another program) means the folder is kept
   and the run refused; `not_a_start` says what is there.
2. Which config changes may a saved run take on resume? The optimizer's hyper-parameters and
   schedule (`ADJUSTABLE`): they leave the saved optimizer state's tree as it is
   (tests/test_reliability_rundir.py builds every optimizer to check). Turning clipping on or off
   (0 or not), or weight decay for sgd and adafactor, adds or removes an optimizer stage
   (`ON_OFF`), and another `optim.name` (or any optim key not listed as adjustable) is another
   state: those stay refused. Each accepted change is printed as one line and appended to
   config_history.jsonl (`record`).
"""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

from jaxlm.config import Config, to_dict
from jaxlm.errors import ConfigError

# What train() writes before its first step, and the folders that must be empty.
START_FILES = ("config.yaml", "tokenizer.json", "model.json", "metrics.jsonl", "tensorboard")
START_FOLDERS = ("base", "base.partial")  # a LoRA run's frozen base, saved before the first step
EMPTY_FOLDERS = ("checkpoints", "best")
HISTORY_FILE = "config_history.jsonl"

ADJUSTABLE = tuple(f"optim.{k}" for k in ("lr", "min_lr", "schedule", "warmup_steps",
                                          "decay_steps", "b1", "b2", "eps", "weight_decay",
                                          "decay_embeddings", "momentum", "grad_clip"))
# 0 or not 0 adds or removes a stage, for these optimizers (None: all of them)
ON_OFF = {"optim.grad_clip": None, "optim.weight_decay": ("sgd", "adafactor")}
OPTIM_HINT = (f" (A run resumes with other optimizer hyper-parameters ({', '.join(ADJUSTABLE)}), "
              "but not with another optim.name, nor with optim.grad_clip (or, for sgd and "
              "adafactor, optim.weight_decay) turned on or off: those change the saved "
              "optimizer state.)")


def pick(d: Any, dotted: str) -> Any:
    """The value at a dotted key of a nested mapping ({} when absent)."""
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def _same_shape(raw: Any, default: dict) -> bool:
    """Whether `raw` has exactly the keys of `default`, section by section."""
    if not isinstance(raw, dict) or set(raw) != set(default):
        return False
    return all(_same_shape(raw[k], v) for k, v in default.items() if isinstance(v, dict) and v)


def is_jaxlm_config(raw: Any) -> bool:
    """A complete resolved config as this jaxlm writes it (a hand-written or foreign config.yaml
    is partial or has other keys)."""
    return _same_shape(raw, to_dict(Config()))


def optim_refusals(old: dict, new: dict) -> list[str]:
    """The optimizer changes a saved run cannot take: any optim key not in `ADJUSTABLE` that
    differs (optim.name, and keys added later until they are shown to be safe), and the stages
    turned on or off (`on_off_changes`)."""
    keys = set(pick(old, "optim")) | set(pick(new, "optim"))
    fixed = [f"optim.{k}" for k in sorted(keys) if f"optim.{k}" not in ADJUSTABLE]
    return [k for k in fixed if pick(old, k) != pick(new, k)] + on_off_changes(old, new)


def on_off_changes(old: dict, new: dict) -> list[str]:
    """The optimizer stages turned on or off between two configs (`ON_OFF`)."""
    def on(d: dict, k: str) -> bool:
        v = pick(d, k)
        return bool(v) if isinstance(v, (int, float)) else True

    name = pick(new, "optim.name")
    return [k for k, names in ON_OFF.items()
            if (names is None or name in names) and on(old, k) != on(new, k)]


def adjustable_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} of the optimizer settings that changed and may change on resume (a key
    an older run's config.yaml lacks is not reported: it had no value to change)."""
    saved = pick(old, "optim")
    return {k: (pick(old, k), pick(new, k)) for k in ADJUSTABLE
            if k.split(".", 1)[1] in saved and pick(old, k) != pick(new, k)}


def record(run_dir: Path, step: int | None, changes: dict[str, tuple[Any, Any]]) -> None:
    """One line on stderr and one record in config_history.jsonl (the old values kept)."""
    import jax

    if jax.process_index() != 0:
        return
    text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
    where = f"from step {step}" if step is not None else "(no checkpoint yet)"
    sys.stderr.write(f"jaxlm: note: resuming '{run_dir}' {where} with changed optimizer "
                     f"settings: {text} (the old values are kept in {HISTORY_FILE}).\n")
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": step,
             "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}}
    with (run_dir / HISTORY_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")


# --- is it only a start? -----------------------------------------------------------------------
def run_files(run_dir: Path, names: tuple[str, ...]) -> list[str]:
    """The entries of `run_dir` that a run writes (`names`, eval_*.json, and leftovers of their
    atomic writes): what --overwrite deletes."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name in names or _is_tmp_of(p.name, names)
                  or (p.name.startswith("eval_") and p.name.endswith(".json")))


def refusal(run_dir: Path, diffs: list[str], more: list[str], files: list[str]) -> ConfigError:
    """The paragraph that refuses to clear a folder holding more than a start (`not_a_start`)."""
    foreign = more[0].startswith("config.yaml")
    shown = ", ".join(more[:8]) + (f" and {len(more) - 8} more" if len(more) > 8 else "")
    head = (f"Run directory '{run_dir}' has a config.yaml that jaxlm did not write" if foreign
            else f"Run directory '{run_dir}' holds a run with a different config "
            f"({', '.join(diffs)} differ) and no checkpoint")
    return ConfigError(
        f"{head}, and more than the files of a jaxlm start that never trained: {shown}. Nothing "
        "in it was changed. Choose another --run"
        + ("" if foreign else " (or rerun with the config it was made with, to resume)")
        + f", or pass --overwrite to delete {', '.join(files)} and start afresh (other files in "
        "the folder are kept).", culprit=str(run_dir))


def not_a_start(run_dir: Path, raw_config: Any) -> list[str]:
    """What in `run_dir` a start that never trained would not hold (empty: clearing it loses
    nothing), each named for the message that refuses to clear it."""
    more = [] if is_jaxlm_config(raw_config) else ["config.yaml (not a config jaxlm wrote)"]
    for p in sorted(run_dir.iterdir()):
        name = p.name
        if name == "config.yaml" or _is_tmp_of(name, START_FILES):
            continue
        if name in EMPTY_FOLDERS and p.is_dir():
            more += [f"{name}/{c.name}" for c in sorted(p.iterdir())]
        elif name == "metrics.jsonl" and p.is_file():
            n = sum(1 for line in p.read_bytes().splitlines() if line.strip())
            more += [f"metrics.jsonl ({n} logged record{'s' * (n != 1)})"] if n else []
        elif name == "tensorboard" and p.is_dir():
            more += [f"tensorboard/{c.name}" for c in sorted(p.iterdir()) if not _empty_events(c)]
        elif name in START_FOLDERS and p.is_dir():
            continue
        elif name == "trackers" and p.is_dir():  # W&B, MLflow: what they logged is in metrics.jsonl
            continue
        elif name in ("tokenizer.json", "model.json") and p.is_file():
            more += [] if _json_object(p, "model") else [f"{name} (not one jaxlm wrote)"]
        else:
            more.append(name + ("/" if p.is_dir() else "") + _what(name))
    return more


def _is_tmp_of(name: str, names: tuple[str, ...]) -> bool:
    """An atomic write's leftover: NAME.<random>.tmp."""
    return name.endswith(".tmp") and any(name.startswith(n + ".") for n in names)


def _json_object(path: Path, key: str) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def _empty_events(path: Path) -> bool:
    """A TensorBoard event file as the logger opens it: its version record and nothing more."""
    if not (path.is_file() and path.name.startswith("events.out.tfevents.")):
        return False
    data = path.read_bytes()
    i = records = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        i, records = i + 12 + length + 4, records + 1
    return i == len(data) and records <= 1


def _what(name: str) -> str:
    known = {"checkpoints.corrupt": " (damaged checkpoints set aside)",
             "best.corrupt": " (damaged checkpoints set aside)",
             "summary.json": " (a finished run's summary)", HISTORY_FILE: " (resumed before)"}
    if name.startswith("eval_") and name.endswith(".json"):
        return " (an evaluation report)"
    return known.get(name, "")
