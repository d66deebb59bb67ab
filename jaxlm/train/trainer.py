"""The trainer: a short loop over compiled steps that calls hooks scheduled every N steps.

Two kinds of hooks, so that the host never waits on the device for bookkeeping:
- *deferred* hooks (logging, throughput, progress, the NaN watch) see step N's metrics after
  the next call has been dispatched, when they are ready or nearly so;
- *immediate* hooks (evaluation, checkpoints, preemption) see step N's state before the next
  call donates it.

Each call of the compiled train step runs up to `steps_per_call` steps (`CompiledSteps.
train_many`, a loop on the device; 1: `CompiledSteps.train`, one step a call). Calls end where a
hook with `every` > 1 is due, so such hooks see exactly their steps; an immediate hook with
`every` = 1 runs after each call (for its last step), a deferred one for every step.

The host runs at most MAX_STEPS_IN_FLIGHT calls ahead of the device: one call queued behind the
running one keeps the device busy, and a deeper queue gains nothing. On several XLA:CPU devices
(a data-parallel CPU mesh, or the fake devices of `--xla_force_host_platform_device_count`) a
queue of some dozens of steps deadlocks the steps' all-reduces, which XLA ends with a fatal
abort after 40 s (tests/test_trainer.py runs such a loop).

A hook may raise `jaxlm.errors.TrainingStopped` (after saving) or call `trainer.request_stop()`
to end the loop after the current call. Learn-from: Levanter's `Trainer.add_hook(fn, every=N)`,
clu's periodic actions as nanodo uses them, Keras' `steps_per_execution`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxlm.errors import ConfigError
from jaxlm.sharding import put_batch
from jaxlm.train.state import TrainState
from jaxlm.train.steps import CompiledSteps


@dataclass
class StepInfo:
    """What a hook sees: the step number (1-based, after the update), its metrics (arrays: on
    the device, or on the host for the steps of a multi-step call) and, for immediate hooks, the
    state after the step."""

    step: int
    metrics: dict[str, Any]
    state: TrainState | None = None
    tokens: int = 0  # token positions the step computed (rows x length, every host's rows)
    call_end: int = 0  # the last step of the call that ran this step (0: this step)


HookFn = Callable[["Trainer", StepInfo], None]
MAX_STEPS_IN_FLIGHT = 2  # dispatched calls the host may run ahead of the device (see above)


class InFlight:
    """The results of the calls dispatched and maybe not done: `add` waits for the oldest once
    more than MAX_STEPS_IN_FLIGHT are queued (the loop's bound, see the module docstring)."""

    def __init__(self) -> None:
        self._queue: deque = deque()

    def add(self, metrics: Any) -> None:
        self._queue.append(metrics)
        if len(self._queue) > MAX_STEPS_IN_FLIGHT:
            jax.block_until_ready(self._queue.popleft())


@dataclass
class Hook:
    """`fn(trainer, info)` every `every` steps (0: only at the last step), and at the last step
    unless `at_end` is False."""

    fn: HookFn
    every: int = 1
    deferred: bool = False
    at_end: bool = True

    def due(self, step: int, last: int) -> bool:
        """Whether the hook runs after `step` of a loop ending at `last`."""
        return bool(self.every and step % self.every == 0) or (self.at_end and step == last)


@dataclass
class Trainer:
    """Runs the train step from a state for `total_steps` steps, `steps_per_call` steps per
    call of the compiled step, calling the hooks."""

    steps: CompiledSteps
    total_steps: int
    hooks: list[Hook] = field(default_factory=list)
    stop_requested: bool = False
    steps_per_call: int = 1

    def add_hook(self, fn: HookFn, every: int = 1, *, deferred: bool = False,
                 at_end: bool = True) -> Hook:
        """Register `fn(trainer, info)`; returns the Hook."""
        hook = Hook(fn, every, deferred, at_end)
        self.hooks.append(hook)
        return hook

    def request_stop(self) -> None:
        """End the loop after the current call (its immediate hooks still run)."""
        self.stop_requested = True

    def _run(self, info: StepInfo | None, deferred: bool) -> None:
        for hook in self.hooks:
            if info is not None and hook.deferred == deferred and hook.due(info.step,
                                                                           self.total_steps):
                hook.fn(self, info)

    def call_end(self, after: int) -> int:
        """The last step of the call that follows step `after`: `steps_per_call` steps on, or
        sooner where a hook with `every` > 1 is due."""
        end = min(after + max(1, self.steps_per_call), self.total_steps)
        for hook in self.hooks:
            if hook.every > 1:
                end = min(end, (after // hook.every + 1) * hook.every)
        return end

    def fit(self, state: TrainState, batches: Iterator[dict], start_step: int = 0) -> TrainState:
        """Train from `start_step` (the state's step) to `total_steps`; returns the last state."""
        pending: tuple[Any, list[StepInfo]] = (None, [])
        in_flight = InFlight()
        hosts = jax.process_count()
        step = start_step
        while step < self.total_steps and not self.stop_requested:
            end = self.call_end(step)
            host = [next(batches) for _ in range(end - step)]
            tokens = [int(np.size(b["inputs"])) * hosts if "inputs" in b else 0 for b in host]
            if self.steps_per_call <= 1:
                state, metrics = self.steps.train(state, put_batch(host[0],
                                                                   self.steps.batch_sharding))
                stacked, last = None, metrics
            else:
                state, metrics = self.steps.train_many(
                    state, put_batch(stack_batches(host, self.steps_per_call),
                                     self.steps.stacked_sharding), np.int32(len(host)))
                stacked, last = metrics, jax.tree.map(lambda x: x[len(host) - 1], metrics)
            in_flight.add(metrics)
            self._run_deferred(*pending)  # the previous call's steps: this call is queued
            pending = (stacked, [StepInfo(step + i + 1, last if stacked is None else {},
                                          tokens=t, call_end=end) for i, t in enumerate(tokens)])
            step = end
            self._run(StepInfo(step, last, state, tokens[-1], end), deferred=False)
        self._run_deferred(*pending)
        return state

    def _run_deferred(self, stacked: Any, infos: list[StepInfo]) -> None:
        """The deferred hooks of one call's steps; a multi-step call's stacked metrics come to
        the host once, each step's row into its StepInfo."""
        rows = None if stacked is None else jax.device_get(stacked)
        for i, info in enumerate(infos):
            if rows is not None:
                info.metrics = {k: v[i] for k, v in rows.items()}
            self._run(info, deferred=True)


def stack_batches(batches: list[dict], slots: int) -> dict:
    """Host batches of one shape stacked on a new leading axis of `slots` rows (rows past the
    batches are zeros: `many_steps` does not run them)."""
    first = batches[0]
    out = {}
    for k, v in first.items():
        if any(b[k].shape != v.shape for b in batches[1:]):
            raise ConfigError(
                f"train.steps_per_call={slots} runs several steps in one call, which needs "
                f"training batches of one shape, but '{k}' changed shape from {v.shape} to "
                f"{next(b[k].shape for b in batches if b[k].shape != v.shape)} (a task whose "
                "batches vary in shape, e.g. length buckets). Set train.steps_per_call: 1.",
                culprit="train.steps_per_call")
        out[k] = np.zeros((slots, *v.shape), v.dtype)
        for i, b in enumerate(batches):
            out[k][i] = b[k]
    return out


def stop_at(step: int) -> Hook:
    """A hook that ends training after `step` without a final checkpoint (tests use it to
    simulate a run cut short)."""
    return Hook(lambda trainer, info: trainer.request_stop(), every=step, at_end=False)
