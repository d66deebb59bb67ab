"""The training loop shared by pretraining and fine-tuning: steps, logging, evaluation, checkpoints.

Resuming is exact: the checkpoint holds the train state (parameters, optimizer state, step, RNG) and
the data iterator position, and every random choice is a function of (seed, step) or (seed, row).
Stopping early (SIGTERM/SIGINT, or non-finite values with train.on_nonfinite=stop) saves a
checkpoint first and raises `TrainingStopped`; rerunning the same command resumes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from jaxlm.errors import TrainingStopped
from jaxlm.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxlm.train.logger import MetricsLogger
from jaxlm.train.preemption import PreemptionGuard
from jaxlm.train.steps import CompiledSteps, put_batch

NONFINITE_EXIT_CODE = 3


@dataclass
class LoopSpec:
    """What the loop needs besides the compiled steps."""

    total_steps: int
    tokens_per_step: int
    flops_per_step: float
    peak_flops: float | None
    log_every: int
    eval_every: int
    checkpoint_every: int
    evaluate: Callable[[Any], dict[str, float]] | None = None  # params -> validation metrics
    on_eval: Callable[[int, Any, dict], None] | None = None  # e.g. keep the best checkpoint
    show_progress: bool = True
    stop_after: int | None = None  # testing aid: stop (without a final save) after this step
    on_nonfinite: str = "stop"  # NaN/Inf loss or gradients: "skip" the update, or "stop"
    preemption_check_every: int = 10  # multi-host: steps between agreeing on a signal
    extra_summary: dict = field(default_factory=dict)


def restore_or_init(steps: CompiledSteps, ckpt: Checkpointer, iterator: Any) -> tuple[Any, int]:
    """The latest intact checkpoint (state and data position) or a fresh state."""
    target = abstract_with_shardings(steps.abstract_state, steps.state_sharding)
    found = ckpt.restore_latest(target) if ckpt.all_steps() else None
    if found is None:
        return steps.init(), 0
    state, data_state, step = found
    if data_state.get("iterator") is not None:
        iterator.set_state(data_state["iterator"])
    return state, step


class NonfiniteWatch:
    """The train state counts steps whose update was dropped for NaN/Inf loss or gradients; the
    loop reads the counter only when it syncs anyway (log steps, and before a checkpoint in stop
    mode) and asks this what is new since the last read."""

    def __init__(self, count: int, step: int):
        self.count, self.checked_at = count, step

    def read(self, step: int, count: int, last: int) -> str | None:
        """A description of the non-finite steps since the last read, or None."""
        since, self.checked_at = self.checked_at, step
        new, self.count = count - self.count, count
        if new <= 0:
            return None
        return (f"at step {last}" if new == 1 else
                f"at {new} steps after step {since}, the last at step {last}")

    def stop(self, what: str, step: int, where: str) -> TrainingStopped:
        return TrainingStopped(
            f"Non-finite loss or gradients (NaN/Inf) {what}. Those updates were not applied, so "
            f"the parameters hold no NaN/Inf; saved a checkpoint at step {step} in '{where}'. "
            "Lower optim.lr, raise optim.warmup_steps or optim.grad_clip, or check the data, "
            f"then rerun the same command to resume from step {step} (or set "
            "train.on_nonfinite=skip to skip such steps and carry on).",
            exit_code=NONFINITE_EXIT_CODE, step=step)


def run_loop(steps: CompiledSteps, state: Any, start_step: int, iterator: Iterator[dict],
             ckpt: Checkpointer, logger: MetricsLogger, spec: LoopSpec) -> tuple[dict[str, Any], Any]:
    """Train from `start_step` to `spec.total_steps`; returns (summary, final state).

    Raises TrainingStopped after saving a checkpoint when a signal arrives (see preemption.py) or,
    with on_nonfinite="stop", when a step had NaN/Inf loss or gradients (seen when the metrics
    are read: at log steps and before checkpoints, so no extra host sync per step).
    """
    step = start_step
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    wall0 = time.perf_counter()
    t_mark, step_mark, compile_s = None, step, 0.0
    bar = tqdm(total=spec.total_steps, initial=step, disable=not spec.show_progress,
               dynamic_ncols=True, desc="train")
    tokens_per_s_all: list[float] = []
    watch = NonfiniteWatch(int(jax.device_get(state["nonfinite"]["count"])), step)

    def save(at: int) -> None:
        ckpt.save(at, state, {"iterator": iterator.get_state()})

    guard = PreemptionGuard(spec.preemption_check_every)
    with guard:
        try:
            while step < spec.total_steps:
                batch = put_batch(next(iterator), steps.batch_sharding)
                state, metrics = steps.train(state, batch)
                step += 1
                if t_mark is None:  # the first step includes compilation; time from its end
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - wall0
                    t_mark, step_mark = time.perf_counter(), step
                log_now = step % spec.log_every == 0 or step == spec.total_steps
                save_now = step % spec.checkpoint_every == 0 or step == spec.total_steps
                news = None  # non-finite steps since the last read of the counter
                if log_now:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    news = watch.read(step, int(m["nonfinite_steps"]),
                                      int(m.pop("nonfinite_last_step")))
                    now = time.perf_counter()
                    if step > step_mark:
                        tps = spec.tokens_per_step * (step - step_mark) / (now - t_mark)
                        m["tokens_per_s"] = tps
                        m["step_time_s"] = (now - t_mark) / (step - step_mark)
                        tokens_per_s_all.append(tps)
                        if spec.peak_flops:
                            m["mfu"] = spec.flops_per_step / m["step_time_s"] / spec.peak_flops
                        t_mark, step_mark = now, step
                    m.pop("weight", None)
                    last_train = m
                    logger.log(step, "train", m)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                elif save_now and spec.on_nonfinite == "stop":  # never checkpoint past a fault
                    count, last = jax.device_get((metrics["nonfinite_steps"],
                                                  metrics["nonfinite_last_step"]))
                    news = watch.read(step, int(count), int(last))
                if news and spec.on_nonfinite == "stop":
                    save(step)
                    ckpt.wait()
                    raise watch.stop(news, step, str(ckpt.directory))
                if news:
                    bar.write(f"step {step}: skipped the update of non-finite loss or gradients "
                              f"{news}; {watch.count} in all")
                if spec.evaluate and spec.eval_every and (step % spec.eval_every == 0
                                                          or step == spec.total_steps):
                    last_eval = spec.evaluate(state["params"])
                    logger.log(step, "val", last_eval)
                    if spec.on_eval:
                        spec.on_eval(step, state, last_eval)
                    bar.write(f"step {step}: " + ", ".join(f"val {k} {v:.4f}"
                                                             for k, v in last_eval.items()))
                    t_mark = time.perf_counter()  # do not count evaluation time as training time
                if save_now:
                    save(step)
                bar.update(1)
                if guard.should_stop(step) and step < spec.total_steps:
                    save(step)
                    ckpt.wait()
                    raise guard.stopped(step, str(ckpt.directory))
                if spec.stop_after is not None and step >= spec.stop_after:
                    break
            ckpt.wait()
        finally:
            bar.close()
    wall = time.perf_counter() - wall0
    return {"step": step, "train": last_train, "val": last_eval, "wall_s": wall,
            "compile_s": compile_s, "nonfinite_steps": watch.count,
            "tokens_per_s": float(np.median(tokens_per_s_all)) if tokens_per_s_all else None,
            **spec.extra_summary}, state


def evaluate_batches(steps: CompiledSteps, params: Any, batches: list[dict]) -> dict[str, float]:
    """Sum loss / correct / weight over a fixed list of host batches; mean loss and accuracy."""
    totals: dict[str, float] = {}
    for b in batches:
        out = jax.device_get(steps.eval(params, put_batch(b, steps.batch_sharding)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    w = max(totals.get("weight", 0.0), 1.0)
    loss = totals.get("loss_sum", 0.0) / w
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "accuracy": totals.get("correct", 0.0) / w}


def run_dir_paths(run_dir: Path) -> dict[str, Path]:
    return {"checkpoints": run_dir / "checkpoints", "tokenizer": run_dir / "tokenizer.json",
            "config": run_dir / "config.yaml"}
