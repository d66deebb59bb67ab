"""What a run directory holds, read from its files alone (no jax import, no checkpoint restore).

A run directory is self-describing: `config.yaml` (the resolved config), `model.json` (resolved
model and head), `tokenizer.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/STEP/`, `best/`
(fine-tuning), `summary.json` (written when a run finishes), `eval_*.json` (`jaxlm evaluate`) and
`hf_import.json` (`jaxlm convert`). `describe_run` gathers them into one dict for `jaxlm info`,
`find_runs` + `runs_table` list every run under a folder for `jaxlm runs`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from jaxlm.errors import CheckpointError

# Validation metrics worth a column, in order of preference, per objective.
KEY_METRIC = {"classification": ("accuracy", "max"), "causal": ("loss", "min"),
              "masked": ("loss", "min")}


def is_run_dir(path: Path) -> bool:
    """A jaxlm run directory has a config.yaml (written before training starts)."""
    return (path / "config.yaml").is_file()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def metric_records(run_dir: str | Path) -> list[dict]:
    """Records of metrics.jsonl, one per (step, split); a resumed run's repeated records keep the
    last one, and a half-written last line (a run still writing) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    latest: dict[tuple[int, str], dict] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec and "split" in rec:
            latest[(int(rec["step"]), str(rec["split"]))] = rec
    return [latest[k] for k in sorted(latest)]


def series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric in one split, finite values only."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r["split"] == split and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the finished orbax checkpoints in a folder (digit-named step folders)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _param_count(spec: dict) -> int | None:
    """Parameters of a model.json spec, by abstract evaluation (no memory, no compile)."""
    try:
        import jax
        from flax import nnx

        from jaxlm.config import ModelConfig
        from jaxlm.models import build_model

        cfg = ModelConfig(**spec["model"])
        head = spec.get("head") or {}
        kw = {k: head[k] for k in ("num_labels", "pooling", "pooler") if k in head}
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(lambda: build_model(cfg, spec["objective"], **kw))
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    except Exception:  # an older or foreign spec: the count is a nicety, not a requirement
        return None


def describe_run(run_dir: str | Path, *, count_params: bool = True) -> dict[str, Any]:
    """Everything `jaxlm info` shows about one run, as a JSON-ready dict.

    kind is pretrain, finetune or converted; status is finished (summary.json at the last step),
    partial (stopped or still running; rerunning the command resumes it) or imported.
    """
    d = Path(run_dir)
    if not is_run_dir(d):
        raise CheckpointError(f"'{d}' is not a jaxlm run directory (no config.yaml). Pass a "
                              "folder written by jaxlm pretrain, finetune or convert; `jaxlm runs "
                              "ROOT` lists the runs under a folder.", culprit=str(d))
    cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
    spec = _read_json(d / "model.json") or {}
    summary = _read_json(d / "summary.json") or {}
    imported = _read_json(d / "hf_import.json")
    train_cfg = cfg.get("train", {}) or {}
    objective = (spec.get("objective") or train_cfg.get("task") or train_cfg.get("objective")
                 or "causal")
    kind = ("converted" if imported is not None else
            "finetune" if objective == "classification" else "pretrain")
    records = metric_records(d)
    ckpts = checkpoint_steps(d / "checkpoints")
    done = max([r["step"] for r in records] + ckpts + [summary.get("step", 0)], default=0)
    total = int(train_cfg.get("steps", 0) or 0)
    if kind == "converted":
        status = "imported"
    elif summary and summary.get("step", 0) >= total:
        status = "finished"
    else:
        status = "partial"
    model = spec.get("model") or cfg.get("model") or {}
    params = summary.get("params")
    if params is None and count_params and spec.get("model"):
        params = _param_count(spec)
    info: dict[str, Any] = {
        "run_dir": str(d), "name": cfg.get("name", d.name), "kind": kind, "objective": objective,
        "status": status, "steps_done": done, "steps_total": total,
        "model": {k: model.get(k) for k in ("family", "num_layers", "d_model", "num_heads",
                                            "num_kv_heads", "d_ff", "vocab_size", "max_len")},
        "params": params, "head": spec.get("head") or {},
        "data": {k: (cfg.get("data") or {}).get(k) for k in ("train", "validation", "seq_len")},
        "batch_size": train_cfg.get("batch_size"),
        "checkpoints": ckpts, "files": sorted(p.name + ("/" if p.is_dir() else "")
                                              for p in d.iterdir()),
        "updated": _mtime(d / "metrics.jsonl") or _mtime(d / "config.yaml"),
    }
    if imported is not None:
        info["imported_from"] = imported.get("source")
    if kind == "finetune" and cfg.get("finetune", {}).get("init_from"):
        info["init_from"] = cfg["finetune"]["init_from"]
    info["last"] = {split: _last(records, split) for split in ("train", "val")}
    info["best"] = _best(d, records, objective)
    info["final"] = {s: _scalars(summary[s]) for s in ("validation", "test")
                     if isinstance(summary.get(s), dict)}
    for path in sorted(d.glob("eval_*.json")):
        report = _read_json(path)
        if isinstance(report, dict):
            info["final"].setdefault(path.stem[len("eval_"):], _scalars(report))
    for key in ("wall_s", "tokens_per_s", "compile_s"):
        if summary.get(key) is not None:
            info[key] = summary[key]
    return info


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _scalars(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _last(records: list[dict], split: str) -> dict[str, Any]:
    rows = [r for r in records if r["split"] == split]
    return {k: v for k, v in rows[-1].items() if k != "split"} if rows else {}


def _best(d: Path, records: list[dict], objective: str) -> dict[str, Any] | None:
    """The kept best checkpoint (fine-tuning), else the best logged validation value."""
    kept = _read_json(d / "best" / "best.json")
    if isinstance(kept, dict) and "value" in kept:
        return {"metric": kept.get("metric"), "value": kept["value"], "step": kept.get("step"),
                "kept": True}
    metric, mode = KEY_METRIC.get(objective, ("loss", "min"))
    steps, values = series(records, "val", metric)
    if not values:
        return None
    i = max(range(len(values)), key=lambda j: values[j] if mode == "max" else -values[j])
    return {"metric": metric, "value": values[i], "step": steps[i], "kept": False}


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` (itself included), sorted; nested runs (runs/sst2/a) too."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"'{root}' is not a folder. Pass the folder that holds your runs "
                              "(default runs/).", culprit=str(root))
    found = []
    for cfg in sorted(root.rglob("config.yaml")):
        inner = cfg.parent.relative_to(root).parts
        if any(part in ("checkpoints", "best", "tensorboard") or part.startswith(".")
               for part in inner):
            continue  # orbax or exported folders inside a run, not runs
        found.append(cfg.parent)
    return found


def _fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def _fmt_params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _fmt_age(t: float | None) -> str:
    if t is None:
        return "-"
    s = max(0.0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def runs_table(root: str | Path, *, count_params: bool = False) -> list[dict[str, str]]:
    """One row of strings per run under `root`, for `jaxlm runs`."""
    root = Path(root)
    rows = []
    for run in find_runs(root):
        info = describe_run(run, count_params=count_params)
        m = info["model"]
        metric, _ = KEY_METRIC.get(info["objective"], ("loss", "min"))
        val = info["last"]["val"].get(metric)
        best = info["best"]
        final = info["final"].get("test", {}).get("accuracy")
        rows.append({
            "run": str(run.relative_to(root)) if run != root else run.name,
            "kind": info["kind"], "objective": info["objective"],
            "model": f"{m.get('family') or '?'} {m.get('num_layers') or '?'}x"
                     f"{m.get('d_model') or '?'}",
            "params": _fmt_params(info["params"]),
            "steps": ("-" if info["kind"] == "converted" else
                      f"{info['steps_done']}/{info['steps_total']}"),
            "status": info["status"],
            "val": f"{metric} {_fmt_num(val)}" if val is not None else "-",
            "best": (f"{best['metric']} {_fmt_num(best['value'])} @{best['step']}"
                     if best else "-"),
            "test acc": _fmt_num(final),
            "updated": _fmt_age(info["updated"]),
        })
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Left-aligned plain-text columns."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def _label(name: str) -> str:
    return f"{name + ':':13}"


def format_info(info: dict[str, Any]) -> str:
    """`jaxlm info` as readable text."""
    m = info["model"]
    lines = [_label("run") + f"{info['run_dir']} ({info['name']})",
             _label("kind") + f"{info['kind']} ({info['objective']}), {info['status']}"]
    if info.get("imported_from"):
        lines.append(_label("imported") + f"{info['imported_from']}")
    if info.get("init_from"):
        lines.append(_label("init from") + f"{info['init_from']}")
    shape = ", ".join(f"{k} {v}" for k, v in m.items() if v not in (None, 0))
    lines.append(_label("model") + f"{shape}")
    if info["params"]:
        lines.append(_label("params") + f"{info['params']:,}")
    head = info["head"]
    if head.get("class_names"):
        lines.append(_label("classes") + f"{', '.join(map(str, head['class_names']))} "
                     f"(pooling {head.get('pooling')}{', pooler' if head.get('pooler') else ''})")
    data = info["data"]
    if data.get("train"):
        lines.append(_label("data") + f"{data['train']}"
                     + (f" (validation {data['validation']})" if data.get("validation") else "")
                     + f", seq_len {data.get('seq_len')}, batch {info.get('batch_size')}")
    if info["kind"] != "converted":
        lines.append(_label("steps") + f"{info['steps_done']} of {info['steps_total']}")
    for split in ("train", "val"):
        last = info["last"][split]
        if last:
            shown = ", ".join(f"{k} {_fmt_num(v)}" for k, v in last.items()
                              if k in ("loss", "accuracy", "perplexity", "macro_f1", "lr",
                                       "tokens_per_s") and v is not None)
            lines.append(_label(f"last {split}") + f"{shown} (step {last['step']})")
    if info["best"]:
        b = info["best"]
        how = "kept in best/" if b["kept"] else "logged"
        lines.append(_label("best val") + f"{b['metric']} {_fmt_num(b['value'])} at step "
                     f"{b['step']} ({how})")
    for split, scalars in info["final"].items():
        shown = ", ".join(f"{k} {_fmt_num(v)}" for k, v in scalars.items()
                          if k in ("accuracy", "macro_f1", "loss", "perplexity", "n", "tokens"))
        lines.append(_label(f"final {split}") + shown)
    if info.get("tokens_per_s"):
        lines.append(_label("throughput") + f"{info['tokens_per_s']:,.0f} tokens/s (median), wall "
                     f"{info.get('wall_s', 0):.1f}s")
    ck = info["checkpoints"]
    lines.append(_label("checkpoints") + f"{', '.join(map(str, ck)) if ck else 'none'}")
    lines.append(_label("files") + f"{' '.join(info['files'])}")
    return "\n".join(lines)
