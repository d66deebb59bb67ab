"""Print the MiniLM SST-2 comparison (markdown): jaxlm runs against the PyTorch reference.

Reads RUN_ROOT/s<seed>/summary.json (`jaxlm finetune` runs) and RUN_ROOT/torch_reference.json
(benchmarks/minilm_sst2_torch_reference.py), as written by scripts/minilm_experiments.sh.
Wall time is the fine-tuning loop of one run (training steps, jaxlm's compilations and the
validation passes; not loading the checkpoint or the final test pass), the same span in both.
Usage: python scripts/minilm_table.py [runs/minilm_sst2]
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m = scale * statistics.mean(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def jaxlm_rows(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("s*/summary.json")):
        m = re.fullmatch(r"s(\d+)", path.parent.name)
        s = json.loads(path.read_text())
        if m and "test" in s:
            rows.append({"seed": int(m.group(1)), "test": s["test"]["accuracy"],
                         "val": s["best"]["value"], "best_step": s["best"]["step"],
                         "wall": s["wall_s"], "compile": s.get("compile_s")})
    return rows


def torch_rows(root: Path) -> list[dict]:
    path = root / "torch_reference.json"
    if not path.is_file():
        return []
    return [{"seed": r["seed"], "test": r["test_accuracy"], "val": r["best"]["value"],
             "best_step": r["best"]["step"], "wall": r["wall_s"]}
            for r in json.loads(path.read_text())["runs"]]


def main(root: str = "runs/minilm_sst2") -> int:
    results = {"jaxlm": jaxlm_rows(Path(root)), "PyTorch transformers": torch_rows(Path(root))}
    print("| implementation | seeds | test accuracy (%) | best val accuracy (%) | per seed test "
          "(%) | fine-tune wall time per run (s) |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            print(f"| {name} | 0 | (no finished runs in {root}) | | | |")
            continue
        per_seed = ", ".join(f"s{r['seed']} {100 * r['test']:.1f}" for r in rows)
        print(f"| {name} | {len(rows)} | {fmt([r['test'] for r in rows])} | "
              f"{fmt([r['val'] for r in rows])} | {per_seed} | "
              f"{fmt([r['wall'] for r in rows], 1.0, 0)} |")
    j, t = results["jaxlm"], results["PyTorch transformers"]
    if j and t:
        gap = 100 * (statistics.mean(r["test"] for r in j) - statistics.mean(r["test"] for r in t))
        print(f"\njaxlm - PyTorch mean test accuracy: {gap:+.2f} points "
              f"({'within' if abs(gap) <= 1.0 else 'NOT within'} 1 point)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
