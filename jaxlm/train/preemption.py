"""Stop training cleanly on SIGTERM / SIGINT: checkpoint the current step, then exit.

Spot VMs and Cloud TPUs get SIGTERM some seconds before they are taken away, and Ctrl-C sends
SIGINT. The signal handler only records the signal; the training loop asks `should_stop(step)`
after each step and, on yes, saves a checkpoint at that step and raises `TrainingStopped` (exit
code 143 for SIGTERM, 130 for SIGINT). Rerunning the same command resumes from that checkpoint.

With several hosts every host must stop at the same step, because saving a checkpoint is a
collective. Hosts combine their flags with a tiny all-gather every `check_every` steps (at step
numbers every host reaches), so a signal seen by any host stops all of them at the same step, and
single-host runs need no sync at all. A second Ctrl-C quits at once, without saving.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

import numpy as np

from jaxlm.errors import TrainingStopped

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report
Allgather = Callable[[np.ndarray], np.ndarray]  # this host's value -> every host's values


def _jax_allgather(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))


class PreemptionGuard:
    """Context manager: catches SIGTERM/SIGINT while training and says when to stop.

    `process_count` and `allgather` default to jax's; tests pass fakes to simulate several hosts.
    """

    def __init__(self, check_every: int = 10, *, process_count: int | None = None,
                 allgather: Allgather | None = None, quiet: bool = False):
        if process_count is None:
            import jax
            process_count = jax.process_count()
        self.check_every = max(1, int(check_every))
        self.process_count = process_count
        self._allgather = allgather or _jax_allgather
        self.quiet = quiet
        self.signum: int | None = None  # the signal this host received (or all hosts agreed on)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum
        if not self.quiet:
            extra = " (press Ctrl-C again to quit without saving)" if signum == signal.SIGINT else ""
            sys.stderr.write(f"\njaxlm: received {signal.Signals(signum).name}: saving a checkpoint "
                             f"after this step, then stopping{extra}.\n")
            sys.stderr.flush()

    def should_stop(self, step: int) -> bool:
        """True when every host should save and stop after `step` (call it after every step, on
        every host)."""
        if self.process_count == 1:
            return self.signum is not None
        if step % self.check_every:
            return False
        flags = self._allgather(np.asarray(self.signum or 0, np.int32)).reshape(-1)
        if int(flags.max()) > 0:
            self.signum = self.signum or int(flags.max())
            return True
        return False

    def stopped(self, step: int, where: str) -> TrainingStopped:
        """The exception to raise once the checkpoint at `step` is saved."""
        sig = signal.Signals(self.signum or signal.SIGTERM)
        return TrainingStopped(
            f"{sig.name} received: saved a checkpoint at step {step} in '{where}'. Rerun the same "
            f"command to resume from step {step}.", exit_code=EXIT_CODES[sig], step=step)
