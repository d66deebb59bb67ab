"""Document pipelines for pretraining: tokenize documents, pack them into fixed-length rows.

A packed row holds several documents; `segment_ids` (1, 2, ... per document, 0 for padding) keep
attention inside each document and `positions` restart at 0 for each, so packing changes nothing a
document sees, only how many rows the corpus needs. Packing uses grain's transforms:
- "concat": `ConcatThenSplitIterDataset`: rows are filled completely; a document longer than the
  row room continues in the next row (as a new segment). No token is lost or padded but the last.
- "first_fit": `FirstFitPackIterDataset`: documents (cut to at most seq_len first) are placed whole
  into the first bin with room; rows are padded instead of splitting documents.

Order: documents are shuffled per epoch from the seed (grain MapDataset.shuffle), sharded across
hosts (host h reads documents h, h+P, ... of the shuffled stream), tokenized (and masked for
masked LM) in background threads, packed, shuffled again within a window of rows (a long document
otherwise fills consecutive rows), batched and prefetched in a background thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grain
import grain.experimental as ge
import numpy as np

from jaxlm.data.iterators import Batches
from jaxlm.data.masking import MaskSpec, mask_tokens
from jaxlm.data.sources import Source
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import DataError

FEATURES = ("inputs", "targets", "weights")


@dataclass(frozen=True)
class DocEncoder:
    """Turns one document into per-token features {inputs, targets, weights} (unpacked)."""

    tok: TextTokenizer
    task: str = "causal"  # "causal": next token; "masked": BERT corruption
    mask: MaskSpec | None = None
    seed: int = 0

    def __call__(self, index: int, text: str | np.ndarray) -> dict[str, np.ndarray] | None:
        if isinstance(text, str):
            enc = self.tok.tokenizer.encode(text, add_special_tokens=False)
            ids, word_ids = list(enc.ids), list(enc.word_ids)
        else:  # ids from the token store (no word boundaries: not for whole-word masking)
            ids, word_ids = [int(x) for x in text], [None] * len(text)
        if self.task == "causal":
            if self.tok.sep_id is not None:
                ids.append(self.tok.sep_id)  # end of document: the model learns where text stops
            if len(ids) < 2:
                return None  # nothing to predict
            x = np.asarray(ids, np.int32)
            return {"inputs": x[:-1], "targets": x[1:], "weights": np.ones(len(x) - 1, np.float32)}
        assert self.mask is not None
        words = word_ids
        if self.tok.cls_id is not None:
            ids, words = [self.tok.cls_id] + ids, [None] + words
        if self.tok.sep_id is not None:
            ids, words = ids + [self.tok.sep_id], words + [None]
        if not ids:
            return None
        rng = np.random.default_rng([self.seed, 1, int(index)])
        return mask_tokens(np.asarray(ids, np.int32), rng, self.mask, words)


class _Chunks(ge.FlatMapTransform):
    """Cut a document's features into pieces of at most `n` tokens (for first-fit packing)."""

    max_fan_out = 1 << 20

    def __init__(self, n: int):
        self.n = n

    def flat_map(self, ex: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        length = len(ex["inputs"])
        return [{k: v[i:i + self.n] for k, v in ex.items()} for i in range(0, length, self.n)]


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed feature names -> the batch keys the model and losses use."""
    return {"inputs": row["inputs"], "targets": row["targets"],
            "weights": row["weights"].astype(np.float32),
            "segment_ids": row["inputs_segment_ids"].astype(np.int32),
            "positions": row["inputs_positions"].astype(np.int32)}


def pack(docs: grain.IterDataset, seq_len: int, packing: str, seed: int,
         num_bins: int = 16) -> grain.IterDataset:
    """Pack per-token feature dicts into rows of `seq_len` with segment ids and positions."""
    lengths = {k: seq_len for k in FEATURES}
    if packing == "concat":
        rows = ge.ConcatThenSplitIterDataset(docs, length_struct=lengths)
    elif packing == "first_fit":
        rows = ge.FirstFitPackIterDataset(ge.FlatMapIterDataset(docs, _Chunks(seq_len)),
                                          length_struct=lengths, num_packing_bins=num_bins,
                                          seed=seed, shuffle_bins=True)
    else:
        raise DataError(f"data.packing={packing!r} is not concat or first_fit.",
                        culprit="data.packing")
    return rows.map(_rename)


def _documents(source: Source) -> grain.MapDataset:
    if len(source) == 0:
        raise DataError(f"The dataset {source.name} has no documents.", culprit=source.name)
    return grain.MapDataset.source(source)


def host_documents(source: Source, seed: int, process_index: int = 0, process_count: int = 1
                   ) -> grain.MapDataset:
    """This host's endless document stream: a fresh seeded permutation each epoch, of which host h
    reads positions h, h+P, h+2P, ... So within an epoch hosts read disjoint documents that
    together cover the dataset."""
    docs = _documents(source).shuffle(seed=seed).repeat(None)
    return docs[process_index::process_count]


def packed_train_dataset(source: Source, encoder: DocEncoder, *, seq_len: int, global_batch: int,
                         seed: int, packing: str = "concat", process_index: int = 0,
                         process_count: int = 1, shuffle_window: int = 256, num_threads: int = 2,
                         prefetch: int = 4) -> Batches:
    """Endless packed training batches for this host: [B/P, seq_len] arrays."""
    if global_batch % process_count:
        raise DataError(f"train.batch_size={global_batch} must divide evenly across "
                        f"{process_count} hosts.", culprit="train.batch_size")
    b = global_batch // process_count
    docs = host_documents(source, seed, process_index, process_count)

    def encode(i: int, ex: dict[str, Any]) -> dict[str, np.ndarray] | None:
        # i counts this host's documents; the global stream index keys the masking rng, so a
        # document occurrence is masked the same way whatever the number of hosts.
        return encoder(i * process_count + process_index, ex["ids"] if "ids" in ex else ex["text"])

    docs = docs.map_with_index(encode).filter(lambda ex: ex is not None)
    rows = pack(docs.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                       prefetch_buffer_size=4 * b)),
                seq_len, packing, seed)
    if shuffle_window > 1:
        rows = ge.WindowShuffleIterDataset(rows, window_size=shuffle_window, seed=seed + 1)
    batches = rows.batch(b, drop_remainder=True)
    if prefetch:
        batches = ge.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    return Batches(batches, per_host=process_count > 1, process_index=process_index,
                   process_count=process_count)


def packed_rows(source: Source, encoder: DocEncoder, seq_len: int, max_rows: int = 0
                ) -> list[dict[str, np.ndarray]]:
    """All documents in order, concat-packed: the deterministic rows for evaluation."""
    docs = _documents(source).map_with_index(
        lambda i, ex: encoder(i, ex["ids"] if "ids" in ex else ex["text"]))
    docs = docs.filter(lambda ex: ex is not None)
    rows = pack(docs.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)),
                seq_len, "concat", 0)
    out = []
    for row in rows:
        out.append(row)
        if max_rows and len(out) >= max_rows:
            break
    return out


def packed_eval_batches(source: Source, encoder: DocEncoder, *, seq_len: int, global_batch: int,
                        max_batches: int = 0, process_index: int = 0, process_count: int = 1
                        ) -> list[dict[str, np.ndarray]]:
    """Every validation token scored once: packed rows in order, the last batch padded with
    zero-weight rows, each host taking its rows of every global batch."""
    if global_batch % process_count:
        raise DataError(f"The eval batch size {global_batch} must divide evenly across "
                        f"{process_count} hosts.", culprit="train.eval_batch_size")
    rows = packed_rows(source, encoder, seq_len, max_batches * global_batch)
    n_batches = math.ceil(len(rows) / global_batch)
    b = global_batch // process_count
    pad = {k: np.zeros(seq_len, np.float32 if k == "weights" else np.int32)
           for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    out = []
    for s in range(n_batches):
        idx = [s * global_batch + process_index * b + j for j in range(b)]
        batch = [rows[g] if g < len(rows) else pad for g in idx]
        out.append({k: np.stack([r[k] for r in batch]) for k in pad})
    return out
