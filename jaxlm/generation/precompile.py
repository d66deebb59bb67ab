"""Compile the decode programs of later generation windows in the background.

Generation past the context length runs in windows (`jaxlm.generate`), and each window shape
(P prompt slots, N new tokens) is its own pair of compiled programs (`jaxlm.generation.decode`):
for a short prompt, the first window and the later ones differ, so a long generation compiles two
or three pairs one after the other, each only when its window starts. Compilation takes longer
than decoding a small model's window, so the later pairs are compiled in a background thread while
the first window compiles and runs; jit finds them in its cache when their window starts.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import jax
import numpy as np

from jaxlm.generation.decode import Decoder
from jaxlm.generation.sampling import Sampling


class WindowPrograms:
    """Prefill and decode compiled for each (P, N) in `shapes`, one after the other in a worker
    thread; `wait(shape)` before a window runs its programs (so they are not compiled twice)."""

    def __init__(self, decoder: Decoder, params: Any, batch: int,
                 shapes: Sequence[tuple[int, int]], *, key: jax.Array, stop_ids: np.ndarray,
                 sampling: Sampling, filler: int, mesh: Any = None):
        self._decoder, self._params, self._batch, self._key = decoder, params, batch, key
        self._stop_ids, self._sampling, self._filler, self._mesh = stop_ids, sampling, filler, mesh
        self._cancelled = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxlm-precompile")
        self._futures: dict[tuple[int, int], Future] = {
            shape: self._pool.submit(self._compile, *shape) for shape in dict.fromkeys(shapes)}
        self._pool.shutdown(wait=False)

    def _compile(self, prompt_slots: int, num_new: int) -> None:
        if self._cancelled.is_set():
            return
        B = self._batch
        # the same argument types and placements as `Generator._windows`' calls (`key`: one of
        # its window keys), so that jit's cache matches
        args = (self._params, np.zeros((B, prompt_slots), np.int32), np.zeros(B, np.int32),
                np.zeros(B, bool), self._key, self._stop_ids)
        static = dict(sampling=self._sampling, filler=self._filler)
        mesh = jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()
        with mesh:  # jax's mesh context is per thread; jaxlm's logical-axis rules are global
            prefill = self._decoder.prefill.lower(*args, num_new=num_new, **static).compile()
            # the prefill's outputs are placed (committed) only when the parameters are, and
            # jit keys its programs on that: describe the state as the real call will pass it
            placed = any(getattr(x, "committed", False) for x in jax.tree.leaves(self._params))
            state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
                s.shape, s.dtype, sharding=s.sharding if placed else None), prefill.out_info)
            self._decoder.decode.lower(self._params, state, np.int32(1), **static).compile()

    def wait(self, shape: tuple[int, int]) -> None:
        """Block until `shape`'s programs are compiled (or their compilation failed: the window
        then compiles them itself, as without this)."""
        future = self._futures.get(shape)
        if future is not None and not future.cancelled():
            future.exception()

    def close(self) -> None:
        """Drop the compilations not started yet and wait for the one running (it holds the
        parameters)."""
        self._cancelled.set()
        for future in self._futures.values():
            future.cancel()
        for future in self._futures.values():
            if not future.cancelled():
                future.exception()
