"""Pretraining data from a config: sources for train/validation, the tokenizer's training texts,
and the batches (random windows over a token stream, or packed documents), causal or masked.

`data.train` / `data.validation` are dataset specs (`jaxlm.data.sources`). Validation is, in
order: `data.validation`; the train spec's own validation split (a TFDS dataset or a directory
with dev.txt); else the last `data.val_fraction` of the training data: of its characters when it
is one document (nanoGPT's split of Tiny Shakespeare), else of its documents.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from jaxlm.data.iterators import Batches
from jaxlm.data.lm_pipeline import eval_batches, train_dataset
from jaxlm.data.masking import MaskSpec
from jaxlm.data.packing import DocEncoder, packed_eval_batches, packed_train_dataset
from jaxlm.data.sources import ListSource, Source, SourceOptions, has_split, parse_spec
from jaxlm.data.text_stream import TextFileSource, open_text_stream
from jaxlm.data.tokenizer import TextTokenizer, iter_chunks
from jaxlm.errors import ConfigError, DataError


class SliceSource(Source):
    """Documents [start, stop) of another source (a held-out tail, without copying)."""

    def __init__(self, base: Source, start: int, stop: int, split: str):
        self.base, self.start, self.stop = base, start, stop
        self.spec, self.split, self.label_names, self.report = (base.spec, split,
                                                                base.label_names, base.report)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < len(self):
            raise IndexError(i)
        return self.base[self.start + int(i)]


def holdout(train: Source, fraction: float) -> tuple[Source, Source]:
    """Split the last `fraction` off: of the characters of a one-document source (so
    `text:input.txt` reproduces nanoGPT's 90/10 split), else of the documents."""
    if isinstance(train, TextFileSource) and (train.documents == "file" or len(train) != 1):
        return train.holdout(fraction)  # the same split, streamed
    if len(train) == 1:
        text = train[0]["text"]
        cut = int(len(text) * (1.0 - fraction))
        mk = lambda t, split: ListSource(train.spec, split, [t], None, None, train.report)  # noqa
        return mk(text[:cut], "train"), mk(text[cut:], "validation")
    n_val = max(1, int(round(len(train) * fraction)))
    if n_val >= len(train):
        raise DataError(f"{train.name} has {len(train)} documents: too few to hold out "
                        f"data.val_fraction={fraction} for validation. Give data.validation.",
                        culprit="data.validation")
    n = len(train)
    return SliceSource(train, 0, n - n_val, "train"), SliceSource(train, n - n_val, n, "validation")


def load_lm_sources(cfg: Any) -> tuple[Source, Source]:
    """(train, validation) sources for pretraining."""
    d = cfg.data
    if not d.train:
        raise DataError("No training data given. Set data.train to a dataset spec, e.g. "
                        "'text:{data_root}/tinyshakespeare/input.txt' or 'tfds:lm1b'.",
                        culprit="data.train")
    opts = SourceOptions.from_config(d)
    spec = parse_spec(cfg.resolve_path(d.train), opts)
    from jaxlm.data.token_store import cache_dir_for
    cache = cache_dir_for(cfg)  # text files are streamed, never read whole
    train = open_text_stream(spec, "train", cache)
    if d.validation:
        val = parse_spec(cfg.resolve_path(d.validation), opts)
        return train, open_text_stream(val, "validation", cache)
    if has_split(spec, "validation"):
        return train, open_text_stream(spec, "validation", cache)
    return holdout(train, d.val_fraction)


def tokenizer_texts(source: Source) -> Iterator[str]:
    """Texts to train a tokenizer on (one long document is fed in pieces; a stream in order)."""
    if isinstance(source, TextFileSource) and (source.documents == "file" or len(source) != 1):
        return source.texts()  # streamed, in the same pieces
    if not source.streamed and len(source) == 1:
        return iter_chunks(source[0]["text"])
    return source.texts()


def encode_stream(tok: TextTokenizer, text: str) -> np.ndarray:
    """Tokenize a long text in line-aligned pieces (in parallel) into one int32 stream."""
    lines = text.splitlines(keepends=True)
    pieces = ["".join(lines[i:i + 256]) for i in range(0, len(lines), 256)]
    ids = tok.encode_batch(pieces)
    return np.fromiter((i for seq in ids for i in seq), dtype=np.int32)


def token_stream(tok: TextTokenizer, source: Source, batch: int = 1024) -> np.ndarray:
    """All documents as one token stream, separated by the tokenizer's [SEP]/EOS when it has one."""
    if len(source) == 1:
        return encode_stream(tok, source[0]["text"])
    parts: list[np.ndarray] = []
    sep = [] if tok.sep_id is None else [tok.sep_id]
    for start in range(0, len(source), batch):
        texts = [source[i]["text"] for i in range(start, min(start + batch, len(source)))]
        for ids in tok.encode_batch(texts):
            parts.append(np.asarray(ids + sep, np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def corpus_tokens(cfg: Any, tok: TextTokenizer, source: Source) -> np.ndarray:
    """`token_stream` of a source; for a text file, read in place from the token store (built
    on first use, `jaxlm.data.token_store`)."""
    if isinstance(source, TextFileSource):
        from jaxlm.data.token_store import cache_dir_for, open_store
        return open_store(source, tok, cache_dir_for(cfg)).tokens
    return token_stream(tok, source)


def packed_documents(cfg: Any, tok: TextTokenizer, source: Source) -> Any:
    """The documents the packed pipeline reads: a text file's from the token store (ids, no
    text held), except one-document files and whole-word masking (which needs the text)."""
    if (isinstance(source, TextFileSource) and source.documents != "file"
            and not (cfg.train.task == "masked" and cfg.data.whole_word_mask)):
        from jaxlm.data.token_store import StoreDocuments, cache_dir_for, open_store
        return StoreDocuments(open_store(source, tok, cache_dir_for(cfg)), source.name)
    return source


def mask_spec_for(cfg: Any, tok: TextTokenizer) -> MaskSpec | None:
    """The masked-LM masking spec for task=masked (None otherwise)."""
    if cfg.train.task != "masked":
        return None
    if cfg.data.whole_word_mask and cfg.data.sampling != "packed":
        raise ConfigError("data.whole_word_mask needs word boundaries, which random windows cut "
                          "through: set data.sampling: packed with document-level data.",
                          culprit="data.whole_word_mask")
    return MaskSpec.for_tokenizer(tok, cfg.data.mask_prob, cfg.data.whole_word_mask)


def lm_train_batches(cfg: Any, tok: TextTokenizer, train: Source, *, process_index: int = 0,
                     process_count: int = 1) -> Batches:
    """This host's training batches (iterate for a checkpointable iterator)."""
    d, t = cfg.data, cfg.train
    mask = mask_spec_for(cfg, tok)
    if d.sampling == "packed":
        docs = packed_documents(cfg, tok, train)
        return packed_train_dataset(docs, DocEncoder(tok, t.task, mask, seed=t.seed),
                                    seq_len=d.seq_len, global_batch=t.batch_size, seed=t.seed,
                                    packing=d.packing, process_index=process_index,
                                    process_count=process_count, prefetch=d.prefetch)
    tokens = corpus_tokens(cfg, tok, train)
    return train_dataset(tokens, seq_len=d.seq_len, global_batch=t.batch_size,
                         num_steps=t.steps, seed=t.seed, sampling=d.sampling,
                         process_index=process_index, process_count=process_count,
                         prefetch=d.prefetch, mask=mask)


def lm_eval_batches(cfg: Any, tok: TextTokenizer, source: Source, *, batch_size: int = 0,
                    max_batches: int | None = None, process_index: int = 0,
                    process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The fixed evaluation batches of a split, exactly as validation during training builds
    them (packed or windows, the same masking seed), so `jaxlm evaluate` reproduces it.
    batch_size 0: train.eval_batch_size, else train.batch_size; max_batches None:
    train.eval_batches (0 or -1: every batch; the auto sample is the task's validation_batches)."""
    d, t = cfg.data, cfg.train
    size = batch_size or t.eval_rows
    cap = max(t.eval_batches if max_batches is None else max_batches, 0)
    mask = mask_spec_for(cfg, tok)
    if d.sampling == "packed":
        docs = packed_documents(cfg, tok, source)
        return packed_eval_batches(docs, DocEncoder(tok, t.task, mask, seed=t.seed + 7919),
                                   seq_len=d.seq_len, global_batch=size, max_batches=cap,
                                   process_index=process_index, process_count=process_count)
    return eval_batches(corpus_tokens(cfg, tok, source), seq_len=d.seq_len, global_batch=size,
                        max_batches=cap, process_index=process_index,
                        process_count=process_count, mask=mask, seed=t.seed + 7919)
