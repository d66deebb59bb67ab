"""Print RUN_DIR/checkpoints/STEP of the kept checkpoint with the lowest validation loss.

Early stopping for pretraining: a causal LM pretrained for many passes over a small corpus
overfits (validation loss rises after a while), and fine-tuning starts better from its
best-validation checkpoint than from its last. Steps come from RUN_DIR/metrics.jsonl ("val" rows);
only checkpoints still on disk are candidates (keep `train.keep_checkpoints` high enough).

Usage: python scripts/best_checkpoint.py RUN_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def best_checkpoint(run_dir: Path) -> Path:
    kept = {int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()}
    val = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "val" and row["step"] in kept:
            val[row["step"]] = row["loss"]
    if not val:
        sys.exit(f"{run_dir}: no kept checkpoint has a validation loss in metrics.jsonl")
    step = min(val, key=lambda s: (val[s], s))
    return run_dir / "checkpoints" / str(step)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(best_checkpoint(Path(sys.argv[1])))
