"""Print the fine-tuning results table (markdown) from finished run directories.

Run directories are named <variant>_s<seed> under one folder per task (scripts/sst_experiments.sh);
each has a summary.json with the test report of its best-validation checkpoint.
Usage: python scripts/results_table.py runs/sst2 runs/trec runs/sst5
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

LABELS = {"scratch_bert": "BERT-style, from scratch", "masked": "BERT-style, masked-LM pretrained",
          "scratch_gpt2": "GPT-2-style, from scratch", "causal": "GPT-2-style, causal-LM pretrained",
          "causal_es": "GPT-2-style, causal-LM pretrained, best-validation checkpoint"}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(folders: list[str]) -> None:
    print("| task | model | seeds | test accuracy (%) | test macro-F1 (%) | fine-tune wall time (s) |")
    print("|---|---|---|---|---|---|")
    for folder in folders:
        groups: dict[str, list[dict]] = defaultdict(list)
        for summary in sorted(Path(folder).glob("*/summary.json")):
            m = re.match(r"(.+)_s(\d+)$", summary.parent.name)
            s = json.loads(summary.read_text())
            if m and "test" in s:
                groups[m.group(1)].append(s)
        for variant in LABELS:
            runs = groups.get(variant)
            if not runs:
                continue
            acc = [r["test"]["accuracy"] for r in runs]
            f1 = [r["test"]["macro_f1"] for r in runs]
            wall = statistics.mean(r["wall_s"] for r in runs)
            print(f"| {Path(folder).name.upper()} | {LABELS[variant]} | {len(runs)} | {fmt(acc)} | "
                  f"{fmt(f1)} | {wall:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/sst2", "runs/trec", "runs/sst5"])
