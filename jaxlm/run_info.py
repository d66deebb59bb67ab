"""Reports over run directories for `jaxlm info`, `jaxlm runs` and `jaxlm plot`: the text of one
run's description (`Run.describe`, gathered by `jaxlm.run_describe`), the table of every run under
a folder, and metric series.

The run directory itself (its files, checkpoints and metrics) is `jaxlm.run.Run`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from jaxlm.errors import CheckpointError
from jaxlm.run import Run
from jaxlm.run_describe import KEY_METRIC


def series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric in one split, finite values only."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r["split"] == split and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


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
        if Run.is_run_dir(cfg.parent):
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
        info = Run(run).describe(count_params=count_params)
        m = info["model"]
        metric, _ = KEY_METRIC.get(info["task"], ("loss", "min"))
        val = info["last"]["val"].get(metric)
        best = info["best"]
        final = info["final"].get("test", {}).get("accuracy")
        rows.append({
            "run": str(run.relative_to(root)) if run != root else run.name,
            "kind": info["kind"], "task": info["task"],
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


# the generation scores `jaxlm info` shows beside the loss (generative runs)
GENERATION_KEYS = ("exact_match", "bleu", "rougeL")


def _generative_head(head: dict[str, Any]) -> list[str]:
    """A generative run's templates, label set and generation settings, one line each."""
    t = head.get("templates") or {}
    chat = ", inside the checkpoint's chat template" if t.get("chat") else ""
    lines = [_label("templates") + f"prompt {t.get('prompt')!r} -> target {t.get('target')!r}"
             f"{chat}"]
    labels = head.get("labels") or []
    if labels:
        shown = ", ".join(map(str, labels[:10])) + (" ..." if len(labels) > 10 else "")
        lines.append(_label("labels") + f"{len(labels)} targets: {shown}")
    s = head.get("sampling") or {}
    how = ("greedy" if not s.get("temperature") else
           f"temperature {s['temperature']}, top_k {s.get('top_k', 0)}, top_p {s.get('top_p', 1.0)}")
    lines.append(_label("generation") + f"up to {head.get('max_new_tokens')} new tokens, {how}")
    return lines


def _label(name: str) -> str:
    return f"{name + ':':13}"


def format_info(info: dict[str, Any]) -> str:
    """`jaxlm info` as readable text."""
    m = info["model"]
    lines = [_label("run") + f"{info['run_dir']} ({info['name']})",
             _label("kind") + f"{info['kind']} ({info['task']}), {info['status']}"]
    if info.get("imported_from"):
        lines.append(_label("imported") + f"{info['imported_from']}")
    if info.get("init_from"):
        lines.append(_label("init from") + f"{info['init_from']}")
    shape = ", ".join(f"{k} {v}" for k, v in m.items() if v not in (None, 0))
    lines.append(_label("model") + f"{shape}")
    if info["params"]:
        lines.append(_label("params") + f"{info['params']:,}")
    if info.get("lora"):
        lo, trained = info["lora"], info.get("trainable_params")
        share = (f"; trained {trained:,} ({100 * trained / info['params']:.1f}%)"
                 if trained and info["params"] else "")
        lines.append(_label("lora") + f"rank {lo['rank']}, alpha {lo['alpha']}, dropout "
                     f"{lo['dropout']}, targets {', '.join(map(str, lo['targets'] or []))}"
                     + (", LM head trained" if lo.get("train_lm_head") else "") + share)
    head = info["head"]
    if head.get("class_names"):
        lines.append(_label("classes") + f"{', '.join(map(str, head['class_names']))} "
                     f"(pooling {head.get('pooling')}{', pooler' if head.get('pooler') else ''})")
    if info["task"] == "generative":
        lines.extend(_generative_head(head))
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
                                       "tokens_per_s") + GENERATION_KEYS and v is not None)
            lines.append(_label(f"last {split}") + f"{shown} (step {last['step']})")
    if info["best"]:
        b = info["best"]
        how = "kept in best/" if b["kept"] else "logged"
        lines.append(_label("best val") + f"{b['metric']} {_fmt_num(b['value'])} at step "
                     f"{b['step']} ({how})")
    for split, scalars in info["final"].items():
        shown = ", ".join(f"{k} {_fmt_num(v)}" for k, v in scalars.items()
                          if k in ("accuracy", "macro_f1", "loss", "perplexity", "n", "tokens")
                          + GENERATION_KEYS)
        lines.append(_label(f"final {split}") + shown)
    if info.get("tokens_per_s"):
        lines.append(_label("throughput") + f"{info['tokens_per_s']:,.0f} tokens/s (median), wall "
                     f"{info.get('wall_s', 0):.1f}s")
    ck = info["checkpoints"]
    lines.append(_label("checkpoints") + f"{', '.join(map(str, ck)) if ck else 'none'}")
    lines.append(_label("files") + f"{' '.join(info['files'])}")
    return "\n".join(lines)
