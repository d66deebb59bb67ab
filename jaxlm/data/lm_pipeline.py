"""grain pipelines that turn a token stream into language-model batches.

A batch is a dict of numpy arrays with a leading host-batch axis:
  inputs [b, T] int32, targets [b, T] int32, weights [b, T] float32 (0 for padding / unscored).
Causal LM: targets are the inputs shifted by one. Masked LM (`mask` given): inputs are corrupted
(`jaxlm.data.masking`), targets the original tokens, weights 1 at the chosen tokens; the choice is
a function of (seed, row), so it is resumable too. Document packing is in `jaxlm.data.packing`.

Row `j` of global batch `s` is global row `s * B + j`; host `h` of `P` reads rows
`s * B + h * B/P ... s * B + (h+1) * B/P - 1`. So the data a step sees does not depend on the number
of hosts, and the iterator position (saved in checkpoints) fully determines the rest of the run.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import grain
import numpy as np

from jaxlm.data.iterators import Batches
from jaxlm.data.masking import MaskSpec, mask_tokens
from jaxlm.errors import DataError


class RandomWindows:
    """Random-access source: row i is a window of T+1 tokens at an offset drawn from (seed, i).

    This is nanoGPT's sampling (uniform random offsets), made deterministic and resumable.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, num_rows: int):
        self.tokens, self.seq_len, self.seed, self.num_rows = tokens, seq_len, seed, num_rows
        self.max_offset = len(tokens) - seq_len - 1

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, i: int) -> np.ndarray:
        off = int(np.random.default_rng([self.seed, int(i)]).integers(0, self.max_offset + 1))
        return self.tokens[off:off + self.seq_len + 1]


class Chunks:
    """Random-access source: the stream cut into consecutive windows of T+1 tokens (stride T)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(i) * self.seq_len
        return self.tokens[start:start + self.seq_len + 1]


def to_lm_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Shift a [b, T+1] stack of token windows into (inputs, targets), every target weighted."""
    windows = np.asarray(windows, np.int32)
    inputs, targets = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    return {"inputs": inputs, "targets": targets, "weights": np.ones(targets.shape, np.float32)}


def to_lm_example(window: np.ndarray) -> dict[str, np.ndarray]:
    """`to_lm_batch` for one window of T+1 tokens (a row of the batch)."""
    return {k: v[0] for k, v in to_lm_batch(np.asarray(window)[None]).items()}


def to_mlm_example(window: np.ndarray, mask: MaskSpec, seed: int, row: int
                   ) -> dict[str, np.ndarray]:
    """The first T tokens of a window of T+1, corrupted for masked LM with rng (seed, row)."""
    rng = np.random.default_rng([seed, 2, int(row)])
    return mask_tokens(np.asarray(window[:-1], np.int32), rng, mask)


def check_corpus(tokens: np.ndarray, seq_len: int, what: str) -> None:
    """Refuse a token stream too short for one training row (seq_len + 1 tokens)."""
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"The {what} has {len(tokens)} tokens, fewer than one sequence of data.seq_len="
            f"{seq_len} (+1 for the shifted target). Use more text or a smaller data.seq_len.",
            culprit=what)


def host_rows(global_batch: int, process_index: int, process_count: int) -> tuple[int, int]:
    """(rows per host, this host's first row inside a global batch)."""
    if global_batch % process_count:
        raise DataError(f"train.batch_size={global_batch} must divide evenly across "
                        f"{process_count} hosts.", culprit="train.batch_size")
    b = global_batch // process_count
    return b, process_index * b


def train_dataset(tokens: np.ndarray, *, seq_len: int, global_batch: int, num_steps: int,
                  seed: int, sampling: str = "random_windows", process_index: int = 0,
                  process_count: int = 1, prefetch: int = 4, mask: MaskSpec | None = None
                  ) -> Batches:
    """This host's training batches for `num_steps` steps (iterate it for a DataIterator)."""
    check_corpus(tokens, seq_len, "training corpus")
    total = num_steps * global_batch
    if sampling == "random_windows":
        base: Any = RandomWindows(tokens, seq_len, seed, total)
    else:
        chunks = grain.MapDataset.source(Chunks(tokens, seq_len))
        epochs = math.ceil(total / len(chunks))
        base = chunks.repeat(epochs).shuffle(seed=seed)
    b, first = host_rows(global_batch, process_index, process_count)

    def batch(step: int) -> dict[str, np.ndarray]:
        # One grain element per batch, not per row: grain's per-element cost is most of a small
        # batch's, and the rows (and so the iterator's state, a batch count) are the same.
        rows = range(step * global_batch + first, step * global_batch + first + b)
        if mask is None:
            return to_lm_batch(np.stack([base[g] for g in rows]))
        examples = [to_mlm_example(base[g], mask, seed, g) for g in rows]
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

    ds = grain.MapDataset.range(num_steps).map(batch)
    return Batches(ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                        prefetch_buffer_size=prefetch)))


class LazyBatches(Sequence):
    """Batches made when read (`make(s)`), as a list would give them: the evaluation of a
    validation stream of any size holds a few batches, not all of them."""

    def __init__(self, n: int, make: Callable[[int], dict[str, np.ndarray]]):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: Any) -> Any:
        if isinstance(s, slice):
            return [self.make(i) for i in range(*s.indices(self.n))]
        i = int(s) + (self.n if int(s) < 0 else 0)
        if not 0 <= i < self.n:
            raise IndexError(s)
        return self.make(i)


def eval_batches(tokens: np.ndarray, *, seq_len: int, global_batch: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1, mask: MaskSpec | None = None,
                 seed: int = 0) -> LazyBatches:
    """Non-overlapping windows over the whole validation stream, padded to full batches with
    zero-weight rows, so every validation token is scored exactly once (masked LM: the same
    tokens are masked at every evaluation). Made on access (`LazyBatches`)."""
    check_corpus(tokens, seq_len, "validation corpus")
    chunks = Chunks(tokens, seq_len)
    n_batches = math.ceil(len(chunks) / global_batch)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    b, first = host_rows(global_batch, process_index, process_count)

    def batch(s: int) -> dict[str, np.ndarray]:
        rows = []
        for j in range(first, first + b):
            g = s * global_batch + j
            if g < len(chunks):
                rows.append(to_lm_example(chunks[g]) if mask is None
                            else to_mlm_example(chunks[g], mask, seed, g))
            else:
                rows.append({"inputs": np.zeros(seq_len, np.int32),
                             "targets": np.zeros(seq_len, np.int32),
                             "weights": np.zeros(seq_len, np.float32)})
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    return LazyBatches(n_batches, batch)
