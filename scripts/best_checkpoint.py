"""Print RUN_DIR/checkpoints/STEP of the kept checkpoint with the lowest validation loss.

Early stopping for pretraining: a causal LM pretrained for many passes over a small corpus
overfits (validation loss rises after a while), and fine-tuning starts better from its
best-validation checkpoint than from its last. Steps come from RUN_DIR/metrics.jsonl ("val" rows);
only intact checkpoints still on disk are candidates (keep `train.keep_checkpoints` high enough).

Usage: python scripts/best_checkpoint.py RUN_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

from jaxlm.checkpoint import check_step_dir
from jaxlm.run import Run


def best_checkpoint(run_dir: Path) -> Path:
    folder = run_dir / "checkpoints"
    val = {r["step"]: r["loss"] for r in Run(run_dir).metric_records()
           if r["split"] == "val" and check_step_dir(folder / str(r["step"]))[0] is not False}
    if not val:
        sys.exit(f"{run_dir}: no intact checkpoint has a validation loss in metrics.jsonl")
    step = min(val, key=lambda s: (val[s], s))
    return folder / str(step)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(best_checkpoint(Path(sys.argv[1])))
