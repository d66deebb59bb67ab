"""Metrics to JSONL (machine-readable) and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax


class MetricsLogger:
    """Appends one JSON object per (step, split) and mirrors scalars to TensorBoard.

    Only process 0 writes, so multi-host runs produce one file.
    """

    def __init__(self, run_dir: str | Path, resumed_from: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter
            if self.path.is_file() and not self.path.read_bytes().endswith(b"\n"):
                with self.path.open("a") as f:  # a killed run's torn last line: start afresh
                    f.write("\n")
            # TensorBoard hides what a killed run logged after the checkpoint it resumes from
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                    purge_step=resumed_from + 1 if resumed_from else None)

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Append one record (step, split, metrics) to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        for k, v in clean.items():
            if math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()

