"""Print the generative fine-tuning tables (markdown) of README.md from finished run directories.

Run directories are named <variant>_s<seed> under one folder per experiment
(scripts/generative_experiments.sh): runs/g2p (scratch, pretrained) and runs/sst2_gen
(classifier, generative). Each has a summary.json with the test report of its kept
(best-validation) checkpoint: for generative runs target loss, exact_match (a fraction), bleu and
rouge1/2/L (0-100), and, for closed label sets, accuracy and macro_f1; for classifiers accuracy
and macro_f1. Means ± sample std over seeds; a per-seed line follows each table. Times: wall_s of
summary.json (the training loop with its validation passes) / the whole run from its first files
to summary.json (loading, final validation and test reports included).
Usage: python scripts/generative_table.py [runs/g2p] [runs/sst2_gen]
       python scripts/generative_table.py --curves runs/sst2_gen   (validation accuracy by step)
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

LABELS = {"scratch": "from scratch (char tokenizer trained on the G2P data)",
          "pretrained": "from jaxlm's causal pretraining (runs/shakespeare_char, Tiny Shakespeare)",
          "classifier": "classification head (configs/sst2_pretrained.yaml)",
          "generative": "generation, label as a word (configs/sst2_generative.yaml)"}


def runs_of(folder: Path) -> dict[str, list[tuple[int, dict]]]:
    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for summary in sorted(folder.glob("*/summary.json")):
        m = re.fullmatch(r"(.+)_s(\d+)", summary.parent.name)
        s = json.loads(summary.read_text())
        if m and "test" in s:
            s["end_to_end_s"] = end_to_end(summary.parent)
            groups[m.group(1)].append((int(m.group(2)), s))
    return groups


def fmt(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def per_seed(runs: list[tuple[int, dict]], key: str, scale: float, digits: int = 1) -> str:
    return " / ".join(f"{scale * s['test'][key]:.{digits}f}" for _, s in runs if key in s["test"])


def walls(runs: list[tuple[int, dict]]) -> str:
    return " / ".join(f"{s['wall_s']:.0f}" for _, s in runs)


def end_to_end(run_dir: Path) -> float:
    """Seconds from the run directory's first files (config, tokenizer) to its summary.json: the
    whole run, final validation and test generation included (wall_s is the training loop)."""
    first = min(p.stat().st_mtime for p in (run_dir / "config.yaml", run_dir / "tokenizer.json")
                if p.is_file())
    return (run_dir / "summary.json").stat().st_mtime - first


def g2p_table(folder: Path) -> None:
    groups = runs_of(folder)
    print("| start | seeds | test exact match (%) | test BLEU | test ROUGE-L | test ROUGE-1 | "
          "test target loss | best val step | training loop / whole run (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in ("scratch", "pretrained"):
        runs = groups.get(variant, [])
        if not runs:
            continue
        t = [s["test"] for _, s in runs]
        print(f"| {LABELS[variant]} | {len(runs)} | {fmt([r['exact_match'] for r in t], 100)} | "
              f"{fmt([r['bleu'] for r in t])} | {fmt([r['rougeL'] for r in t])} | "
              f"{fmt([r['rouge1'] for r in t])} | {fmt([r['loss'] for r in t], 1, 3)} | "
              f"{', '.join(str(s['best']['step']) for _, s in runs)} | "
              f"{fmt([s['wall_s'] for _, s in runs], 1, 0)} / "
              f"{fmt([s['end_to_end_s'] for _, s in runs], 1, 0)} |")
    print()
    for variant in ("scratch", "pretrained"):
        runs = groups.get(variant, [])
        if runs:
            seeds = "/".join(str(seed) for seed, _ in runs)
            print(f"- {variant}, seeds {seeds}: exact match {per_seed(runs, 'exact_match', 100)} %, "
                  f"BLEU {per_seed(runs, 'bleu', 1)}, ROUGE-L {per_seed(runs, 'rougeL', 1)}, "
                  f"training loop {walls(runs)} s, whole run "
                  f"{' / '.join(str(round(s['end_to_end_s'])) for _, s in runs)} s")
    print()


def sst_table(folder: Path) -> None:
    groups = runs_of(folder)
    print("| SST-2, same backbone and budget | seeds | test accuracy (%) | test macro-F1 (%) | "
          "test exact match (%) | test BLEU | best val step | training loop / whole run (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in ("classifier", "generative"):
        runs = groups.get(variant, [])
        if not runs:
            continue
        t = [s["test"] for _, s in runs]
        print(f"| {LABELS[variant]} | {len(runs)} | {fmt([r.get('accuracy') for r in t], 100)} | "
              f"{fmt([r.get('macro_f1') for r in t], 100)} | "
              f"{fmt([r.get('exact_match') for r in t], 100)} | {fmt([r.get('bleu') for r in t])} | "
              f"{', '.join(str(s['best']['step']) for _, s in runs)} | "
              f"{fmt([s['wall_s'] for _, s in runs], 1, 0)} / "
              f"{fmt([s['end_to_end_s'] for _, s in runs], 1, 0)} |")
    print()
    for variant in ("classifier", "generative"):
        runs = groups.get(variant, [])
        if runs:
            seeds = "/".join(str(seed) for seed, _ in runs)
            print(f"- {variant}, seeds {seeds}: test accuracy {per_seed(runs, 'accuracy', 100)} %, "
                  f"macro-F1 {per_seed(runs, 'macro_f1', 100)} %, "
                  f"training loop {walls(runs)} s, whole run "
                  f"{' / '.join(str(round(s['end_to_end_s'])) for _, s in runs)} s")
    c, g = groups.get("classifier", []), groups.get("generative", [])
    if c and g:
        diff = (statistics.mean(s["test"]["accuracy"] for _, s in g)
                - statistics.mean(s["test"]["accuracy"] for _, s in c))
        print(f"- generative minus classifier, mean test accuracy: {100 * diff:+.1f} points")
    print()


def val_curves(folder: Path, metric: str = "accuracy") -> None:
    """Validation `metric` at every evaluation step of every run (finished or not), from
    metrics.jsonl: the same-step comparison when some runs have not finished."""
    rows: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(folder.glob("*/metrics.jsonl")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.parent.name)
        if not m:
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("split") == "val" and metric in r:
                rows[m.group(1)][int(m.group(2))][r["step"]] = r[metric]
    if not rows:
        return
    steps = sorted({s for v in rows.values() for d in v.values() for s in d})
    print(f"| {folder.name}: validation {metric} (%) by step | "
          + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for variant, seeds in rows.items():
        cells = []
        for step in steps:
            vals = [d[step] for d in seeds.values() if step in d]
            cells.append(f"{fmt(vals, 100)} (n={len(vals)})" if vals else "–")
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print()


def main(folders: list[str]) -> None:
    if folders and folders[0] == "--curves":
        for folder in map(Path, folders[1:]):
            val_curves(folder)
        return
    for folder in map(Path, folders):
        if not folder.is_dir():
            print(f"({folder}: no such folder)\n")
            continue
        groups = runs_of(folder)
        if {"scratch", "pretrained"} & groups.keys():
            g2p_table(folder)
        if {"classifier", "generative"} & groups.keys():
            sst_table(folder)


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/g2p", "runs/sst2_gen"])
