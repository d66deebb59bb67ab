"""Metrics to JSONL (machine-readable, always: jaxlm's own commands read it) and to the trackers
`logging.trackers` names: TensorBoard, W&B, MLflow (`jaxlm.train.trackers`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax

from jaxlm.train.trackers import TensorBoardTracker, Tracker, open_trackers


class MetricsLogger:
    """Appends one JSON object per (step, split) and mirrors the finite scalars to the trackers.

    Only process 0 writes, so multi-host runs produce one file and one tracker run. A tracker
    that fails mid-run is switched off with one warning: the run goes on, and metrics.jsonl
    still holds everything. A resumed tracker run skips the steps it already holds (those
    logged before the kill, after the checkpoint resumed from), as W&B refuses a step logged
    twice; TensorBoard instead purges them and takes the new values.
    """

    def __init__(self, run_dir: str | Path, resumed_from: int = 0, cfg: Any = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.trackers: list[Tracker] = []
        self.logged_through = 0  # the last step an earlier invocation logged
        if not self.enabled:
            return
        if self.path.is_file() and not self.path.read_bytes().endswith(b"\n"):
            with self.path.open("a") as f:  # a killed run's torn last line: start afresh
                f.write("\n")
        if resumed_from:
            self.logged_through = _last_step(self.path)
        self.trackers = (open_trackers(cfg, Path(run_dir), resumed_from) if cfg is not None
                         else [TensorBoardTracker(Path(run_dir), resumed_from)])

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Append one record (step, split, metrics) to metrics.jsonl and the trackers."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        scalars = {f"{split}/{k}": v for k, v in clean.items() if math.isfinite(v)}
        for t in self._live(int(step)):
            self._call(t, "log_metrics", int(step), scalars)

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary (summary.json's contents) to the trackers."""
        for t in self._live(0):
            self._call(t, "log_summary", summary)

    def close(self, status: str = "finished") -> None:
        """End the tracker runs (status: finished, failed or stopped)."""
        for t in list(self.trackers):
            self._call(t, "close", status)
        self.trackers = []

    def _live(self, step: int) -> list[Tracker]:
        return [t for t in self.trackers if not (t.resumed and 0 < step <= self.logged_through)]

    def _call(self, tracker: Tracker, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as e:  # a dashboard never ends a run
            if tracker in self.trackers:
                self.trackers.remove(tracker)
            from jaxlm.checkpoint import warn
            warn(f"the {tracker.name} tracker failed ({type(e).__name__}: {e}); it logs nothing "
                 "more in this run, which carries on (metrics.jsonl holds every metric).")


def _last_step(path: Path) -> int:
    """The last step metrics.jsonl holds (0 when none)."""
    last = 0
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                last = max(last, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last
