"""Stop training cleanly on SIGTERM / SIGINT: checkpoint the current step, then exit.

Spot VMs and Cloud TPUs get SIGTERM some seconds before they are taken away, and Ctrl-C sends
SIGINT. The signal handler only records the signal; the training loop asks `should_stop(step)`
after each step and, on yes, saves a checkpoint at that step and raises `TrainingStopped` (exit
code 143 for SIGTERM, 130 for SIGINT). Rerunning the same command resumes from that checkpoint.

With several hosts every host must stop at the same step, because saving a checkpoint is a
collective. Hosts exchange their flags every `check_every` steps (at step numbers every host
reaches) through the jax.distributed coordination service: a host-side key-value exchange, so it
never waits for the queued device work. A signal seen by any host stops all of them at the same
step; single-host runs need no exchange at all. A second Ctrl-C quits at once, without saving.
"""
from __future__ import annotations

import itertools
import signal
import sys
import threading
from typing import Any, Callable

import numpy as np

from jaxlm.errors import TrainingStopped

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report
EXCHANGE_TIMEOUT_S = 600  # a host this late at an exchange point is gone: fail, do not hang
# (exchange id, this host's value, previous exchange id or None) -> every host's value
Allgather = Callable[[str, int, "str | None"], list[int]]
_GUARDS = itertools.count()  # guards are made in the same order on every host


def _coordination_allgather(key: str, value: int, previous: str | None) -> list[int]:
    """Every host's value, through the coordination service's key-value store and barrier (the
    way orbax's multihost helpers talk): no device computation, no wait for queued steps."""
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # several processes without jax.distributed: a device all-gather
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1).tolist()
    client.key_value_set(f"jaxlm/{key}/{jax.process_index()}", str(value))
    client.wait_at_barrier(f"jaxlm_{key}", timeout_in_ms=EXCHANGE_TIMEOUT_S * 1000)
    if previous is not None:  # every host is past this barrier, so done reading the previous one
        client.key_value_delete(f"jaxlm/{previous}/{jax.process_index()}")
    return [int(v) for _, v in client.key_value_dir_get(f"jaxlm/{key}/")]


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
        self._allgather = allgather or _coordination_allgather
        self._id = next(_GUARDS)
        self._last_key: str | None = None
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
        key = f"preempt_{self._id}_{step}"
        flags = self._allgather(key, int(self.signum or 0), self._last_key)
        self._last_key = key
        if max(flags) > 0:
            self.signum = self.signum or max(flags)
            return True
        return False

    def stopped(self, step: int, where: str) -> TrainingStopped:
        """The exception to raise once the checkpoint at `step` is saved."""
        sig = signal.Signals(self.signum or signal.SIGTERM)
        return TrainingStopped(
            f"{sig.name} received: saved a checkpoint at step {step} in '{where}'. Rerun the same "
            f"command to resume from step {step}.", exit_code=EXIT_CODES[sig], step=step)
