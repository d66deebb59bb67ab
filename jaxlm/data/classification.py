"""Classification batches: token ids padded to a few length buckets, labels, example weights.

A batch is {inputs [b, L] int32, segment_ids [b, L] int32 (1 = token, 0 = padding), labels [b]
int32, weights [b] float32 (0 = a padding row)}, with L the smallest bucket that holds the longest
example of the *global* batch, so every host pads to the same shape and jit compiles one program per
bucket. Examples are [CLS] text [SEP] (the tokenizer's own post-processor when it has one, e.g. a
BERT tokenizer.json) cut to seq_len, keeping [SEP].

Buckets: `data.length_buckets`, else fitted to the batches themselves (`fitted_buckets`): the
longest example of a random batch of short sentences is still long, so fixed powers of two pad
most batches to seq_len; a few multiples of 8 placed where the batches' longest examples fall
pad far less, for one compiled program each.

Training batches: a seeded permutation per epoch (grain), global batch s = examples s*B ... s*B+B-1
of that stream, host h takes rows h*B/P ... (h+1)*B/P - 1. The iterator state is an index, the same
on every host. Evaluation batches: every example exactly once, in order; the last batch is filled
with zero-weight padding rows.

Packed batches (`pack=True`, what fine-tuning uses unless `data.pack_examples: false`): the same
B examples per step, but several short examples share a row of seq_len tokens, so the model runs
on about the tokens the examples hold rather than B times the longest one (a batch of random
sentences is mostly padding otherwise). Segment ids 1..K number the examples of a row (attention
never crosses them) and positions restart at 0 for each, so every example's logits are the ones
it gets alone in a row; labels and weights are [R, K] (example slot k of row r; weight 0: empty).
Rows are filled longest example first, each into the first row with room (first-fit decreasing);
R takes a few fitted values (one compiled program each) and K is fixed per run.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import numpy as np

from jaxlm.data.iterators import Batches
from jaxlm.data.sources import Source, SourceOptions, has_split, open_source, parse_spec
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import DataError


def default_buckets(seq_len: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest` up to seq_len (always including seq_len)."""
    out, n = [], smallest
    while n < seq_len:
        out.append(n)
        n *= 2
    return out + [seq_len]


def encode_texts(tok: TextTokenizer, texts: Sequence[str], seq_len: int) -> list[np.ndarray]:
    """[CLS] text [SEP] ids per text (the tokenizer's post-processor when it has one), cut to
    seq_len keeping [SEP]: the one encoding used for training, evaluation and prediction."""
    has_post = tok.tokenizer.post_processor is not None
    ids = []
    for e in tok.encode_batch(list(texts), add_special_tokens=has_post):
        if not has_post:
            e = ([tok.cls_id] if tok.cls_id is not None else []) + e + (
                [tok.sep_id] if tok.sep_id is not None else [])
        if len(e) > seq_len:
            e = e[:seq_len - 1] + [e[-1]] if e[-1] == tok.sep_id else e[:seq_len]
        ids.append(np.asarray(e, np.int32))
    return ids


def encode_examples(source: Source, tok: TextTokenizer, seq_len: int
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(token ids per example, lengths, labels), all examples of the split, in order."""
    if source.label_names is None:
        raise DataError(f"{source.name} has no labels, so it cannot be used for classification. "
                        "Use a labeled source (labeled:, tsv:/csv:/jsonl: with a label field, or a "
                        "TFDS dataset with a ClassLabel feature).", culprit=source.name)
    n = len(source)
    if n == 0:
        raise DataError(f"{source.name} has no examples.", culprit=source.name)
    examples = [source[i] for i in range(n)]
    labels = np.array([e["label"] for e in examples], np.int32)
    ids = encode_texts(tok, [e["text"] for e in examples], seq_len)
    return ids, example_lengths(ids), labels


def example_lengths(ids: Sequence[np.ndarray]) -> np.ndarray:
    """Each example's length in tokens (at least 1: an empty example still takes a slot)."""
    return np.array([max(len(x), 1) for x in ids], np.int32)


def fitted_buckets(batch_longest: Sequence[int], seq_len: int, *, most: int = 4,
                   multiple: int = 8, min_gain: float = 0.05) -> list[int]:
    """Up to `most` bucket lengths (multiples of `multiple`, and seq_len) for batches whose
    longest examples are `batch_longest`: starting from seq_len alone, greedily add the length
    that cuts the mean padded length the most, while it cuts it by at least `min_gain` (each
    bucket costs a compilation)."""
    longest = np.minimum(np.asarray(batch_longest, np.int64), seq_len)
    if longest.size == 0:
        return [seq_len]
    need = np.minimum(-(-longest // multiple) * multiple, seq_len)
    candidates = sorted(set(need.tolist()) - {seq_len})
    buckets = [seq_len]

    def mean_padded(bs: list[int]) -> float:
        edges = np.asarray(sorted(bs))
        return float(edges[np.searchsorted(edges, need)].mean())

    current = mean_padded(buckets)
    while len(buckets) < most and candidates:
        best = min(candidates, key=lambda c: mean_padded(buckets + [c]))
        after = mean_padded(buckets + [best])
        if current - after < min_gain * current:
            break
        buckets.append(best)
        candidates.remove(best)
        current = after
    return sorted(buckets)


def length_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` (the largest when none does)."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


class _Encoded:
    """Pre-tokenized split; builds host batches from global example indices."""

    def __init__(self, source: Source | None, tok: TextTokenizer, seq_len: int,
                 buckets: Sequence[int] | None, pad_id: int,
                 encoded: tuple[list[np.ndarray], np.ndarray, np.ndarray] | None = None):
        """The examples of `source`, or `encoded` (ids, lengths, labels) when given."""
        self.ids, self.lengths, self.labels = (encoded if encoded is not None else
                                               encode_examples(source, tok, seq_len))
        self.seq_len, self.buckets = seq_len, sorted(set(buckets or ()))
        if self.buckets and self.buckets[-1] < seq_len:
            self.buckets.append(seq_len)
        self.pad_id = pad_id
        self.fill_id = tok.cls_id if tok.cls_id is not None else pad_id

    def longest(self, global_idx: Sequence[int]) -> int:
        """The longest example of a global batch (index list, -1 = a padding row)."""
        real = [i for i in global_idx if i >= 0]
        return int(self.lengths[real].max()) if real else 1

    def fit_buckets(self, batches: Sequence[Sequence[int]]) -> None:
        """Buckets fitted to these global batches, unless the config gave them."""
        if not self.buckets:
            self.buckets = fitted_buckets([self.longest(b) for b in batches], self.seq_len)

    def batch(self, global_idx: Sequence[int], host_slice: slice) -> dict[str, np.ndarray]:
        """Rows `host_slice` of the global batch `global_idx` (-1 = a padding row)."""
        L = length_bucket(self.longest(global_idx), self.buckets)
        rows = list(global_idx)[host_slice]
        b = len(rows)
        inputs = np.full((b, L), self.pad_id, np.int32)
        seg = np.zeros((b, L), np.int32)
        labels = np.zeros(b, np.int32)
        weights = np.zeros(b, np.float32)
        for r, i in enumerate(rows):
            if i < 0:  # padding row: one visible token so attention has something to see
                inputs[r, 0], seg[r, 0] = self.fill_id, 1
                continue
            x = self.ids[i]
            inputs[r, :len(x)] = x
            seg[r, :len(x)] = 1
            labels[r], weights[r] = self.labels[i], 1.0
        return {"inputs": inputs, "segment_ids": seg, "labels": labels, "weights": weights}


def first_fit_decreasing(lengths: Sequence[int], capacity: int, slots: int = 0
                         ) -> list[list[int]]:
    """Positions of examples grouped into rows of `capacity` tokens: the longest first, each into
    the first row with room (and, with `slots`, fewer than that many examples). Deterministic:
    ties keep their order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        r = next((r for r, free in enumerate(room)
                  if free >= n and (not slots or len(rows[r]) < slots)), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    return rows


class _Packer:
    """Packed batches of an encoded split: row counts fitted to the batches (multiples of
    `row_multiple`, so rows split evenly over data-parallel shards, micro-batches and hosts),
    examples per row fixed by the most the fitted batches put in one row."""

    def __init__(self, enc: _Encoded, batches: Sequence[Sequence[int]], row_multiple: int):
        self.enc = enc
        plans = [self.plan(b, 0) for b in batches]
        self.slots = max((len(row) for p in plans for row in p), default=1)
        # fitted up to the most rows a fitted batch needs; one example per row, the last bucket,
        # holds any batch (it is compiled only if a later batch needs it)
        up = lambda n: -(-n // row_multiple) * row_multiple  # noqa: E731
        needs = [len(p) for p in plans] or [1]
        self.row_buckets = sorted(set(fitted_buckets(needs, up(max(needs)), multiple=row_multiple))
                                  | {up(max((len(b) for b in batches), default=1))})

    def plan(self, global_idx: Sequence[int], slots: int) -> list[list[int]]:
        """The examples of each row (global example indices)."""
        real = [i for i in global_idx if i >= 0]
        groups = first_fit_decreasing(self.enc.lengths[real], self.enc.seq_len, slots)
        return [[real[j] for j in g] for g in groups]

    def batch(self, global_idx: Sequence[int], process_index: int, process_count: int
              ) -> dict[str, np.ndarray]:
        """This host's rows of the packed global batch `global_idx` (-1 = no example)."""
        plan = self.plan(global_idx, self.slots)
        R = length_bucket(len(plan), self.row_buckets)
        per_host = R // process_count
        mine = (plan + [[]] * R)[process_index * per_host:(process_index + 1) * per_host]
        enc, L, K = self.enc, self.enc.seq_len, self.slots
        out = {"inputs": np.full((per_host, L), enc.pad_id, np.int32),
               "segment_ids": np.zeros((per_host, L), np.int32),
               "positions": np.zeros((per_host, L), np.int32),
               "labels": np.zeros((per_host, K), np.int32),
               "weights": np.zeros((per_host, K), np.float32)}
        for r, row in enumerate(mine):
            if not row:  # an empty row: one visible token so attention has something to see
                out["inputs"][r, 0], out["segment_ids"][r, 0] = enc.fill_id, 1
            at = 0
            for k, i in enumerate(row):
                x = enc.ids[i]
                out["inputs"][r, at:at + len(x)] = x
                out["segment_ids"][r, at:at + len(x)] = k + 1
                out["positions"][r, at:at + len(x)] = np.arange(len(x))
                out["labels"][r, k], out["weights"][r, k] = enc.labels[i], 1.0
                at += len(x)
        return out


def packed_text_batches(ids: Sequence[np.ndarray], tok: TextTokenizer, seq_len: int,
                        batch_size: int
                        ) -> tuple[list[dict[str, np.ndarray]], list[list[list[int]]]]:
    """Packed rows of encoded texts (`encode_texts`), `batch_size` texts per batch in order, and
    each batch's plan: the text indices of each row, in slot order (prediction reads the
    [rows, K, C] logits back into the texts' order with it)."""
    enc = _Encoded(None, tok, seq_len, None, tok.pad_id or 0,
                   encoded=(list(ids), example_lengths(ids), np.zeros(len(ids), np.int32)))
    groups = [list(range(s, min(s + batch_size, len(ids)))) for s in range(0, len(ids), batch_size)]
    packer = _Packer(enc, groups, 1)
    return ([packer.batch(g, 0, 1) for g in groups],
            [packer.plan(g, packer.slots) for g in groups])


FIT_STEPS = 2048  # training batches the buckets are fitted to (the first ones of the run)


def _host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise DataError(f"The batch size {global_batch} must divide evenly across {process_count} "
                        "hosts.", culprit="train.batch_size")
    b = global_batch // process_count
    return slice(process_index * b, (process_index + 1) * b)


def classification_dataset(source: Source, tok: TextTokenizer, *, seq_len: int, global_batch: int,
                           num_steps: int, seed: int, buckets: Sequence[int] | None = None,
                           process_index: int = 0, process_count: int = 1,
                           prefetch: int = 4, pack: bool = False, row_multiple: int = 1
                           ) -> Batches:
    """This host's training batches for `num_steps` steps (reshuffled every epoch); `pack`:
    packed rows (module docstring), their count a multiple of `row_multiple`."""
    enc = _Encoded(source, tok, seq_len, buckets, tok.pad_id or 0)
    _require_two_classes(source, np.unique(enc.labels))
    n = len(enc.ids)
    order = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    hs = _host_slice(global_batch, process_index, process_count)

    def indices(step: int) -> list[int]:
        return [int(order[step * global_batch + j]) for j in range(global_batch)]

    fit = [indices(step) for step in range(min(num_steps, FIT_STEPS))]
    if pack:
        packer = _Packer(enc, fit, math.lcm(row_multiple, process_count))
        make = lambda step: packer.batch(indices(step), process_index, process_count)  # noqa: E731
    else:
        enc.fit_buckets(fit)
        make = lambda step: enc.batch(indices(step), hs)  # noqa: E731
    ds = grain.MapDataset.range(num_steps).map(make)
    return Batches(ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                        prefetch_buffer_size=prefetch)))


def _require_two_classes(source: Source, present: Sequence[int]) -> None:
    """A training split whose examples all have one label trains a classifier that answers that
    label for everything (and scores perfectly on a split like it): refused."""
    if len(present) < 2:
        names = source.label_names or []
        only = names[present[0]] if len(present) and present[0] < len(names) else "?"
        raise DataError(f"{source.name} has training examples of one class only ({only!r}"
                        f"{f', of the {len(names)} declared' if len(names) > 1 else ''}): a "
                        "classifier trained on it answers that class for everything. Give "
                        "data.train a split with at least two classes (check data.label_field and "
                        "the file).", culprit=source.name)


def classification_eval_batches(source: Source, tok: TextTokenizer, *, seq_len: int,
                                global_batch: int, buckets: Sequence[int] | None = None,
                                process_index: int = 0, process_count: int = 1,
                                pack: bool = False, row_multiple: int = 1
                                ) -> list[dict[str, np.ndarray]]:
    """Every example of the split exactly once, `global_batch` at a time in order; padding rows
    (and a packed batch's empty example slots) have weight 0."""
    enc = _Encoded(source, tok, seq_len, buckets, tok.pad_id or 0)
    n = len(enc.ids)
    hs = _host_slice(global_batch, process_index, process_count)
    rows = [[i if i < n else -1 for i in range(s * global_batch, (s + 1) * global_batch)]
            for s in range(math.ceil(n / global_batch))]
    if pack:
        packer = _Packer(enc, rows, math.lcm(row_multiple, process_count))
        return [packer.batch(idx, process_index, process_count) for idx in rows]
    enc.fit_buckets(rows)
    return [enc.batch(idx, hs) for idx in rows]


def classification_sources(cfg: Any) -> dict[str, Source]:
    """{"train", "validation"?, "test"?} sources for fine-tuning, sharing one label set.

    validation/test: `data.validation` / `data.test` when given, else the train spec's own split of
    that name (a TFDS dataset, or a directory with dev.txt/test.txt), else absent.
    """
    d = cfg.data
    if not d.train:
        raise DataError("No training data given. Set data.train to a labeled dataset spec, e.g. "
                        "'labeled:{data_root}/sst2' or 'tfds:imdb_reviews'.", culprit="data.train")
    opts = SourceOptions.from_config(d)
    spec = parse_spec(cfg.resolve_path(d.train), opts)
    out: dict[str, Source] = {"train": open_source(spec, "train")}
    names = out["train"].label_names
    if names is None:
        raise DataError(f"{out['train'].name} has no labels; fine-tuning needs a labeled source "
                        "(labeled:, tsv:/csv:/jsonl: with data.label_field, or a TFDS dataset "
                        "with a ClassLabel feature).", culprit="data.train")
    if len(names) < 2:
        _require_two_classes(out["train"], range(len(names)))
    for split, given in (("validation", d.validation), ("test", d.test)):
        if given:
            out[split] = open_source(cfg.resolve_path(given), split, opts, label_names=names)
        elif has_split(spec, split):
            out[split] = open_source(spec, split, label_names=names)
    return out
