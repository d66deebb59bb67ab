"""The iterator the training loop holds: grain batches plus a JSON state for the checkpoint.

`get_state()` / `set_state()` are what the training checkpoints save beside the model (as JSON, written
by the primary host). Two details make that exact:
- JSON turns tuples into lists, and grain's packing compares its state against tuples; the state is
  normalised back on restore.
- Packed pipelines read a different shard of documents on each host, so each host's position
  differs. With several hosts, `get_state()` gathers every host's state (a collective: all hosts
  call it at the same step, as the loop does) and `set_state()` picks this host's entry.
"""
from __future__ import annotations

import atexit
import gc
import json
import weakref
from typing import Any, Callable, Iterator

import grain
import numpy as np

from jaxlm.errors import CheckpointError

Gather = Callable[[bytes], list[bytes]]  # this host's bytes -> every host's bytes, in order


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every host's bytes (jax multihost collective)."""
    from jax.experimental import multihost_utils

    n = np.array([len(data)], np.int32)
    lengths = np.asarray(multihost_utils.process_allgather(n)).reshape(-1)
    buf = np.zeros(int(lengths.max()), np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(lengths), -1)
    return [rows[i, :lengths[i]].tobytes() for i in range(len(lengths))]


def _grain_state(obj: Any, slices: bool = False) -> Any:
    """Undo JSON's tuple -> list where grain expects tuples (packing `remainder_slices`)."""
    if isinstance(obj, dict):
        return {k: _grain_state(v, slices or k == "remainder_slices") for k, v in obj.items()}
    if isinstance(obj, list):
        items = [_grain_state(v, slices) for v in obj]
        return tuple(items) if slices else items
    return obj


_LIVE: "weakref.WeakSet[DataIterator]" = weakref.WeakSet()


@atexit.register
def _release_at_exit() -> None:
    """Free grain iterators (and their prefetch threads) while Python is still whole: freed at
    interpreter teardown instead, grain's destructors print spurious tracebacks."""
    for d in list(_LIVE):
        d._it = None
    gc.collect()


class DataIterator:
    """Wraps a grain DatasetIterator: `next()`, and a checkpointable JSON state."""

    def __init__(self, it: Any, *, per_host: bool, process_index: int = 0,
                 process_count: int = 1, gather: Gather | None = None):
        self._it = it
        _LIVE.add(self)
        self.per_host = per_host  # True: the state differs between hosts (packed pipelines)
        self.process_index, self.process_count = process_index, process_count
        self._gather = gather or _allgather_bytes

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """The position to checkpoint (JSON-able); packed per-host pipelines gather every host's."""
        local = json.loads(json.dumps(self._it.get_state()))
        if not self.per_host or self.process_count == 1:
            return {"grain": local}
        blobs = self._gather(json.dumps(local).encode())
        return {"hosts": [json.loads(b) for b in blobs]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume from a `get_state()` value (a per-host state needs the same host count)."""
        if "hosts" in state:
            hosts = state["hosts"]
            if len(hosts) != self.process_count:
                raise CheckpointError(
                    f"The checkpoint's data position was saved by {len(hosts)} hosts, and this run "
                    f"has {self.process_count}. A packed pipeline gives each host its own shard of "
                    "documents, so the position cannot be carried over exactly: resume on the same "
                    "number of hosts, or start a new run directory.", culprit="data")
            local = hosts[self.process_index]
        elif "grain" in state:
            local = state["grain"]
        else:  # a bare grain state (older checkpoints)
            local = state
        self._it.set_state(_grain_state(local))

    def close(self) -> None:
        """Stop the underlying iterator's background work (prefetch threads)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class Batches:
    """An iterable of host batches (a grain IterDataset) whose iterators are `DataIterator`s."""

    def __init__(self, dataset: grain.IterDataset, *, per_host: bool = False,
                 process_index: int = 0, process_count: int = 1, gather: Gather | None = None):
        self.dataset = dataset
        self._kw = dict(per_host=per_host, process_index=process_index,
                        process_count=process_count, gather=gather)

    def __iter__(self) -> DataIterator:
        return DataIterator(iter(self.dataset), **self._kw)


def take(it: Iterator[dict], n: int) -> list[dict]:
    """The next `n` batches of an iterator, as a list."""
    return [next(it) for _ in range(n)]
