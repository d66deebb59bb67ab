"""The trainer: a short loop over compiled steps that calls hooks scheduled every N steps.

Two kinds of hooks, so that the host never waits on the device for bookkeeping:
- *deferred* hooks (logging, throughput, progress, the NaN watch) see step N's metrics after
  step N+1 has been dispatched, when they are ready or nearly so;
- *immediate* hooks (evaluation, checkpoints, preemption) see step N's state before the next
  step donates it.

The host runs at most MAX_STEPS_IN_FLIGHT steps ahead of the device: one step queued behind the
running one keeps the device busy, and a deeper queue gains nothing. On several XLA:CPU devices
(a data-parallel CPU mesh, or the fake devices of `--xla_force_host_platform_device_count`) a
queue of some dozens of steps deadlocks the steps' all-reduces, which XLA ends with a fatal
abort after 40 s (tests/test_trainer.py runs such a loop).

A hook may raise `jaxlm.errors.TrainingStopped` (after saving) or call `trainer.request_stop()`
to end the loop after the current step. Learn-from: Levanter's `Trainer.add_hook(fn, every=N)`,
clu's periodic actions as nanodo uses them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxlm.sharding import put_batch
from jaxlm.train.state import TrainState
from jaxlm.train.steps import CompiledSteps


@dataclass
class StepInfo:
    """What a hook sees: the step number (1-based, after the update), its metrics (device
    arrays) and, for immediate hooks, the state after the step."""

    step: int
    metrics: dict[str, Any]
    state: TrainState | None = None
    tokens: int = 0  # token positions the step computed (rows x length, every host's rows)


HookFn = Callable[["Trainer", StepInfo], None]
MAX_STEPS_IN_FLIGHT = 2  # dispatched steps the host may run ahead of the device (see above)


class InFlight:
    """The results of the steps dispatched and maybe not done: `add` waits for the oldest once
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
    """Runs `steps.train` from a state for `total_steps` steps, calling the hooks."""

    steps: CompiledSteps
    total_steps: int
    hooks: list[Hook] = field(default_factory=list)
    stop_requested: bool = False

    def add_hook(self, fn: HookFn, every: int = 1, *, deferred: bool = False,
                 at_end: bool = True) -> Hook:
        """Register `fn(trainer, info)`; returns the Hook."""
        hook = Hook(fn, every, deferred, at_end)
        self.hooks.append(hook)
        return hook

    def request_stop(self) -> None:
        """End the loop after the current step (its immediate hooks still run)."""
        self.stop_requested = True

    def _run(self, info: StepInfo | None, deferred: bool) -> None:
        for hook in self.hooks:
            if info is not None and hook.deferred == deferred and hook.due(info.step,
                                                                           self.total_steps):
                hook.fn(self, info)

    def fit(self, state: TrainState, batches: Iterator[dict], start_step: int = 0) -> TrainState:
        """Train from `start_step` (the state's step) to `total_steps`; returns the last state."""
        pending: StepInfo | None = None
        in_flight = InFlight()
        hosts = jax.process_count()
        for step in range(start_step + 1, self.total_steps + 1):
            host = next(batches)
            tokens = int(np.size(host["inputs"])) * hosts if "inputs" in host else 0
            state, metrics = self.steps.train(state, put_batch(host, self.steps.batch_sharding))
            in_flight.add(metrics)
            self._run(pending, deferred=True)  # step-1's metrics: step is already queued
            pending = StepInfo(step, metrics, tokens=tokens)
            self._run(StepInfo(step, metrics, state, tokens), deferred=False)
            if self.stop_requested:
                break
        self._run(pending, deferred=True)
        return state


def stop_at(step: int) -> Hook:
    """A hook that ends training after `step` without a final checkpoint (tests use it to
    simulate a run cut short)."""
    return Hook(lambda trainer, info: trainer.request_stop(), every=step, at_end=False)
