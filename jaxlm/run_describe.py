"""What a run directory says about its run, gathered from its files alone (no checkpoint restore):
`describe(run)`, which `Run.describe` returns and `jaxlm info` / `jaxlm runs` format
(`jaxlm.run_info`). The files themselves are `jaxlm.run.Run`'s."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxlm.config import ModelConfig
from jaxlm.errors import CheckpointError

if TYPE_CHECKING:
    from jaxlm.run import Run

# The validation metric that says how good a run is, and which way is better, per task.
KEY_METRIC = {"classification": ("accuracy", "max"), "causal": ("loss", "min"),
              "generative": ("loss", "min"),
              "masked": ("loss", "min")}

_MODEL_KEYS = ("family", "num_layers", "d_model", "num_heads", "num_kv_heads", "d_ff",
               "vocab_size", "max_len")


def describe(run: Run, *, count_params: bool = True) -> dict[str, Any]:
    """Everything `jaxlm info` shows about the run, as a JSON-ready dict.

    kind is pretrain, finetune or converted; status is finished (summary.json at the last
    step), partial (stopped or still running; rerunning the command resumes it) or imported.
    """
    _require_run_dir(run)
    raw = run.raw_config()
    spec = _mapping(run.read_json(run.model_spec_path))
    summary = {k: v for k, v in _mapping(run.summary()).items()  # numbers where numbers go
               if k not in _SUMMARY_NUMBERS or _is_number(v)}
    imported = run.read_json(run.import_info_path)
    imported = _mapping(imported) if imported is not None else None
    train_cfg = _mapping(raw.get("train"))
    task = (spec.get("task") or spec.get("objective") or train_cfg.get("task")
            or train_cfg.get("objective") or "causal")
    task = task if isinstance(task, str) else "causal"
    kind = ("converted" if imported is not None else
            "finetune" if task in ("classification", "generative") else "pretrain")
    records = run.metric_records()
    ckpts = run.checkpoint_steps()
    total = train_cfg.get("steps") if isinstance(train_cfg.get("steps"), int) else 0
    model = _mapping(spec.get("model")) or _mapping(raw.get("model"))
    params = summary.get("params")
    if params is None and count_params and spec.get("model"):
        params = _param_count(spec)
    info: dict[str, Any] = {
        "run_dir": str(run.path), "name": raw.get("name", run.path.name), "kind": kind,
        "task": task, "status": _status(kind, summary, total),
        "steps_done": max([r["step"] for r in records] + ckpts + [summary.get("step", 0)],
                          default=0),
        "steps_total": total, "model": {k: model.get(k) for k in _MODEL_KEYS},
        "params": params, "head": _mapping(spec.get("head")),
        "data": {k: _mapping(raw.get("data")).get(k) for k in ("train", "validation", "seq_len")},
        "batch_size": train_cfg.get("batch_size"),
        "checkpoints": ckpts, "files": sorted(p.name + ("/" if p.is_dir() else "")
                                              for p in run.path.iterdir()),
        "updated": _mtime(run.metrics_path) or _mtime(run.config_path),
    }
    if imported is not None:
        info["imported_from"] = imported.get("source")
    if kind == "finetune" and _mapping(raw.get("finetune")).get("init_from"):
        info["init_from"] = raw["finetune"]["init_from"]
    lora = _mapping(_mapping(raw.get("finetune")).get("lora"))
    if kind == "finetune" and isinstance(lora.get("rank"), int) and lora["rank"] > 0:
        info["lora"] = {k: lora.get(k) for k in ("rank", "alpha", "dropout", "targets",
                                                 "train_lm_head")}
        info["trainable_params"] = summary.get("trainable_params")
    info["last"] = {split: _last(records, split) for split in ("train", "val")}
    info["best"] = _best(run, records, task)
    info["final"] = _final(run, summary)
    for key in ("wall_s", "tokens_per_s", "compile_s"):
        if summary.get(key) is not None:
            info[key] = summary[key]
    return info


_SUMMARY_NUMBERS = ("step", "params", "wall_s", "tokens_per_s", "compile_s")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mapping(value: Any) -> dict:
    """A run file's (or config section's) mapping; {} for anything else, e.g. a file damaged by
    hand or by a killed write: `jaxlm info` describes what is readable rather than failing."""
    return value if isinstance(value, dict) else {}


def _require_run_dir(run: Run) -> None:
    if not run.is_run_dir(run.path):
        why = ("no config.yaml" if not run.config_path.is_file() else
               "a config.yaml, but no model.json, tokenizer, metrics or checkpoints")
        raise CheckpointError(f"'{run.path}' is not a jaxlm run directory ({why}). Pass a "
                              "folder written by jaxlm pretrain, finetune or convert; `jaxlm "
                              "runs ROOT` lists the runs under a folder.",
                              culprit=str(run.path))


def _status(kind: str, summary: dict, total: int) -> str:
    if kind == "converted":
        return "imported"
    if summary and summary.get("step", 0) >= total:
        return "finished"
    return "partial"


def _best(run: Run, records: list[dict], task: str) -> dict[str, Any] | None:
    """The kept best checkpoint (fine-tuning), else the best logged validation value."""
    kept = run.read_json(run.best_dir / "best.json")
    if isinstance(kept, dict) and "value" in kept:
        return {"metric": kept.get("metric"), "value": kept["value"],
                "step": kept.get("step"), "kept": True}
    metric, mode = KEY_METRIC.get(task, ("loss", "min"))
    rows = [(int(r["step"]), float(r[metric])) for r in records
            if r["split"] == "val" and isinstance(r.get(metric), (int, float))
            and math.isfinite(r[metric])]
    if not rows:
        return None
    step, value = (max if mode == "max" else min)(rows, key=lambda sv: sv[1])
    return {"metric": metric, "value": value, "step": step, "kept": False}


def _final(run: Run, summary: dict) -> dict[str, dict[str, float]]:
    """The final scores per split: summary.json's, then those `jaxlm evaluate` wrote."""
    final = {s: _scalars(summary[s]) for s in ("validation", "test")
             if isinstance(summary.get(s), dict)}
    for path in sorted(run.path.glob("eval_*.json")):
        report = run.read_json(path)
        if isinstance(report, dict):
            final.setdefault(path.stem[len("eval_"):], _scalars(report))
    return final


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _scalars(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _last(records: list[dict], split: str) -> dict[str, Any]:
    rows = [r for r in records if r["split"] == split]
    return {k: v for k, v in rows[-1].items() if k != "split"} if rows else {}


def _param_count(spec: dict) -> int | None:
    """Parameters of a model.json spec, by abstract evaluation (no memory, no compile)."""
    try:
        from jaxlm.params import abstract_params

        head = spec.get("head") or {}
        kw = {k: head[k] for k in ("num_labels", "pooling", "pooler") if k in head}
        task = spec.get("task") or spec["objective"]
        abstract = abstract_params(ModelConfig(**spec["model"]), {task: kw})
        return int(sum(math.prod(v.get_value().shape) for v in abstract.values()))
    except Exception:  # an older or foreign spec: the count is a nicety, not a requirement
        return None
