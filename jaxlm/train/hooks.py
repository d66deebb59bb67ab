"""The hooks every jaxlm training run installs: metrics and throughput, the NaN watch,
validation, checkpoints, preemption and the progress bar (see `jaxlm.train.trainer`).

Resuming is exact: a checkpoint holds the train state and the data iterator's position. Stopping
early (SIGTERM/SIGINT, or NaN/Inf with train.on_nonfinite=stop) saves a checkpoint first and
raises `TrainingStopped`; rerunning the same command resumes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from jaxlm.errors import TrainingStopped
from jaxlm.host_memory import release_freed_host_memory
from jaxlm.train.trainer import StepInfo, Trainer

NONFINITE_EXIT_CODE = 3


class NonfiniteWatch:
    """Says what is new in the state's count of updates dropped for NaN/Inf."""

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

    def stop(self, what: str, step: int, where: str, lr: float,
             min_lr: float = 0.0) -> TrainingStopped:
        """The error that ends a run in on_nonfinite=stop mode: it names the rerun with half the
        learning rate, which resumes from this checkpoint (optimizer hyper-parameters may change
        on resume, see `jaxlm.run_start`); optim.min_lr is halved with it when it would exceed
        the new rate (optim.min_lr <= optim.lr is checked), so the command is never refused."""
        sets = [f"optim.lr={yaml_float(lr / 2)}"]
        if min_lr > lr / 2:
            sets.append(f"optim.min_lr={yaml_float(min_lr / 2)}")
        lower = " --set ".join(sets)
        retry = tuple(x for s in sets for x in ("--set", s))
        return TrainingStopped(
            f"Non-finite loss or gradients (NaN/Inf) {what}. Those updates were not applied, so "
            f"the parameters hold no NaN/Inf; saved a checkpoint at step {step} in '{where}'. "
            f"Resume from step {step} with a lower learning rate: the same command with --set "
            f"{lower} (from Python: the same config with {' and '.join(sets)}); "
            "optim.warmup_steps and optim.grad_clip may change on resume too. Or check the "
            "data, or set "
            "train.on_nonfinite=skip to skip such steps and carry on.",
            exit_code=NONFINITE_EXIT_CODE, step=step, retry=retry)


def yaml_float(x: float) -> str:
    """`x` as --set reads it back as a float (YAML 1.1 needs a '.' in the mantissa: 5.0e-05)."""
    text = f"{x:g}"
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


@dataclass
class TrainingHooks:
    """The standard hooks of a run, and what they gather for its summary."""

    logger: Any  # MetricsLogger
    checkpointer: Any  # jaxlm.checkpoint.Checkpointer
    iterator: Any  # the data iterator (its position goes into checkpoints)
    layout: Any  # StateLayout: the state's checkpoint layout
    tokens_per_step: int  # for steps that do not say how many token positions they computed
    flops_per_step: float = 0.0  # of a step of tokens_per_step positions
    peak_flops: float | None = None
    on_nonfinite: str = "stop"
    evaluate: Callable[[Any], dict] | None = None  # params -> validation report
    # the last step's validation, when it differs (the run's final report on the whole split)
    final_evaluate: Callable[[Any], dict] | None = None
    on_eval: Callable[[int, Any, dict], None] | None = None  # e.g. keep the best checkpoint
    show_progress: bool = True
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    last_report: tuple[int, dict] | None = None  # (step, the full validation report)
    tokens_per_s: list = field(default_factory=list)
    compile_s: float = 0.0
    fault: str | None = None  # non-finite steps seen and not yet acted on (stop mode)

    def install(self, trainer: Trainer, start: int, state: Any, cfg: Any, guard: Any) -> None:
        """Register the hooks on `trainer` for a loop starting after step `start`."""
        t, self.lr, self.min_lr = cfg.train, cfg.optim.lr, cfg.optim.min_lr
        self.watch = NonfiniteWatch(int(jax.device_get(state.nonfinite_count)), start)
        self.bar = tqdm(total=trainer.total_steps, initial=start, disable=not self.show_progress,
                        dynamic_ncols=True, desc="train")
        self.start = self.mark = time.perf_counter()
        self.mark_step, self.first, self.hook_s, self.guard = start, True, 0.0, guard
        self.tokens = 0  # token positions computed since the mark
        trainer.add_hook(self.progress, 1, deferred=True)
        trainer.add_hook(self.log, t.log_every, deferred=True)
        if self.evaluate is not None and t.eval_every:
            trainer.add_hook(self.validate, t.eval_every)
        trainer.add_hook(self.checkpoint, t.checkpoint_every)
        # one host: after every call; several: at the steps where the hosts agree (the guard's)
        trainer.add_hook(self.preempt, 1 if guard.process_count == 1 else guard.check_every)

    def progress(self, trainer: Trainer, info: StepInfo) -> None:
        """Advance the bar; the end of the first call marks the compile time (it includes it,
        and the call's steps); throughput counts the steps after it."""
        if self.first and info.step >= info.call_end:
            jax.block_until_ready(info.metrics["loss"])
            release_freed_host_memory()  # set-up and compilation are done
            self.first, self.mark, self.hook_s = False, time.perf_counter(), 0.0
            self.compile_s, self.mark_step, self.tokens = self.mark - self.start, info.step, 0
        elif not self.first:  # steps of several shapes (packed classification rows) differ
            self.tokens += info.tokens or self.tokens_per_step
        self.bar.update(1)

    def log(self, trainer: Trainer, info: StepInfo) -> None:
        """Log step N's metrics with throughput and MFU since the last log (hook time excluded)."""
        m = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
        news = self.watch.read(info.step, int(m["nonfinite_steps"]),
                               int(m.pop("nonfinite_last_step")))
        now = time.perf_counter()
        if info.step > self.mark_step:
            steps = info.step - self.mark_step
            step_s = (now - self.mark - self.hook_s) / steps
            tokens = self.tokens / steps  # per step
            m.update(tokens_per_s=tokens / step_s, step_time_s=step_s)
            self.tokens_per_s.append(m["tokens_per_s"])
            if self.peak_flops:
                flops = self.flops_per_step * tokens / self.tokens_per_step
                m["mfu"] = flops / step_s / self.peak_flops
            self.mark, self.mark_step, self.hook_s, self.tokens = now, info.step, 0.0, 0
        m.pop("weight", None)
        self.last_train = m
        self.logger.log(info.step, "train", m)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
        self._news(news)

    def _news(self, news: str | None) -> None:
        if news and self.on_nonfinite == "stop":
            self.fault = news  # acted on by the next immediate hook, which has a state to save
        elif news:
            self.bar.write(f"skipped the update of non-finite loss or gradients {news}; "
                           f"{self.watch.count} in all")

    def _timed(self, fn: Callable[[], Any], ready: Any = None) -> Any:
        """Run `fn`, its time kept out of the throughput. `ready` (the step's state) is waited
        for first: steps still queued on the device would otherwise finish inside `fn`'s time
        and drop out of the throughput too."""
        if ready is not None:
            jax.block_until_ready(ready)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.hook_s += time.perf_counter() - t0

    def validate(self, trainer: Trainer, info: StepInfo) -> None:
        """Evaluate the step's parameters; log, report and offer them as the best."""
        last = trainer is not None and info.step == trainer.total_steps
        evaluate = self.final_evaluate if last and self.final_evaluate else self.evaluate
        report = self._timed(lambda: evaluate(info.state.params), ready=info.state.step)
        release_freed_host_memory()
        self.last_report = (info.step, report)
        self.last_eval = {k: v for k, v in report.items() if isinstance(v, float)}
        self.logger.log(info.step, "val", self.last_eval)
        if self.on_eval:
            self._timed(lambda: self.on_eval(info.step, info.state, self.last_eval))
        self.bar.write(f"step {info.step}: " + ", ".join(
            f"val {k} {v:.4f}" for k, v in self.last_eval.items()))

    def save(self, step: int, state: Any) -> None:
        """Checkpoint the state and the data position at `step`."""
        self._timed(lambda: self.checkpointer.save(step, self.layout.to_checkpoint(state),
                                                   {"iterator": self.iterator.get_state()}),
                    ready=state.step)

    def checkpoint(self, trainer: Trainer, info: StepInfo) -> None:
        """Save at checkpoint steps, never past a fault (stop mode reads the counter first)."""
        if self.on_nonfinite == "stop":
            count, last = jax.device_get((info.state.nonfinite_count,
                                          info.state.nonfinite_last_step))
            self._news(self.watch.read(info.step, int(count), int(last)))
        if not self.fault:
            self.save(info.step, info.state)

    def preempt(self, trainer: Trainer, info: StepInfo) -> None:
        """On a pending fault or signal: save this step and stop."""
        if self.fault:
            self.save(info.step, info.state)
            self.checkpointer.wait()
            raise self.watch.stop(self.fault, info.step, str(self.checkpointer.directory),
                                  self.lr, self.min_lr)
        if self.guard.should_stop(info.step) and info.step < trainer.total_steps:
            self.save(info.step, info.state)
            self.checkpointer.wait()
            raise self.guard.stopped(info.step, str(self.checkpointer.directory))

    def finish(self, state: Any) -> None:
        """After the loop: a fault seen by the last deferred read (a loop ended early) still
        saves and stops, as one seen during the loop does."""
        if self.fault:
            step = int(jax.device_get(state.step))
            self.save(step, state)
            self.checkpointer.wait()
            raise self.watch.stop(self.fault, step, str(self.checkpointer.directory), self.lr,
                                  self.min_lr)

    def summary(self, step: int) -> dict[str, Any]:
        """The loop's part of the run summary."""
        self.bar.close()
        return {"step": step, "train": self.last_train, "val": self.last_eval,
                "wall_s": time.perf_counter() - self.start, "compile_s": self.compile_s,
                "nonfinite_steps": self.watch.count,
                "tokens_per_s": float(np.median(self.tokens_per_s)) if self.tokens_per_s else None}
