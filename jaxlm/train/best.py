"""The best validation checkpoint of a run, kept in RUN_DIR/best (orbax, one step), by the
metric its task names (`finetune.best_metric` for classifiers)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.atomic import write_text_atomic
from jaxlm.checkpoint import require_intact, seal
from jaxlm.errors import ConfigError


class BestKeeper:
    """Keeps the parameters of the best validation result in RUN_DIR/best (orbax, one step)."""

    def __init__(self, run_dir: Path, metric: str, mode: str):
        self.dir, self.metric, self.mode = run_dir / "best", metric, mode
        self.manager = ocp.CheckpointManager(
            self.dir.absolute(), options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=False,
                best_fn=lambda m: m[metric], best_mode=mode),
            item_names=("params",))
        meta = self.dir / "best.json"
        self.best = json.loads(meta.read_text()) if meta.is_file() else None
        steps = list(self.manager.all_steps())
        if steps and (self.best is None or self.best["step"] not in steps):
            # killed between orbax's save and best.json: the folder (and orbax's metrics) win
            value = (self.manager.metrics(steps[-1]) or {}).get(metric)
            self.best = ({"step": steps[-1], "value": value, "metric": metric}
                         if value is not None else None)

    def offer(self, step: int, params: Any, metrics: dict) -> bool:
        """Keep `params` if `metrics` beats the best so far; returns whether it did."""
        if self.metric not in metrics:
            raise ConfigError(f"finetune.best_metric '{self.metric}' is not a validation metric; "
                              f"choose one of {', '.join(sorted(k for k, v in metrics.items() if isinstance(v, float)))}.",
                              culprit="finetune.best_metric")
        value = metrics[self.metric]
        better = (self.best is None or (value > self.best["value"] if self.mode == "max"
                                        else value < self.best["value"]))
        if better and step not in self.manager.all_steps():
            self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                              metrics={self.metric: value}, force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                seal(self.dir / str(step))  # checked when loaded (evaluate, predict, export)
            self.best = {"step": step, "value": value, "metric": self.metric}
            write_text_atomic(self.dir / "best.json", json.dumps(self.best))
        return better

    def restore(self, target: Any) -> Any:
        """The kept best parameters, restored onto `target`'s shardings."""
        step = self.best["step"]
        require_intact(self.dir, step)
        return self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))["params"]

    def close(self) -> None:
        """Close the checkpoint manager."""
        self.manager.close()
