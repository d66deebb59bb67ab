"""Tokenizers: train one with the `tokenizers` library, or load any Hugging Face tokenizer.json.

The tokenizer is saved as `tokenizer.json` in the run directory so that fine-tuning, evaluation
and generation use exactly the tokenizer the model was trained with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from jaxlm.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ("char", "bpe", "wordpiece", "unigram")


def _char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    # the characters seen, marked by code point in bulk (a large corpus in seconds); in code
    # point order, as sorted() orders them
    seen = np.zeros(0x110000, bool)
    for text in texts:
        seen[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)] = True
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in map(chr, np.flatnonzero(seen)):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int = 0,
                    show_progress: bool = False) -> Tokenizer:
    """Train a tokenizer of `kind` (char, bpe = byte-level BPE, wordpiece, unigram) on texts."""
    if kind == "char":
        return _char_tokenizer(texts)
    if kind not in KINDS:
        raise DataError(f"Tokenizer kind '{kind}' is not one of {', '.join(KINDS)}. Set "
                        "data.tokenizer.kind (or --kind) to one of them.", culprit=kind)
    if vocab_size <= 0:
        raise DataError(f"A '{kind}' tokenizer needs a vocabulary size: set "
                        "data.tokenizer.vocab_size (or --vocab-size), e.g. 8000.",
                        culprit="vocab_size")
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                            show_progress=show_progress)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                          unk_token="[UNK]", show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# Tokenizers the repository's configs name, and the commands that build them (the first lines of
# scripts/sst_experiments.sh), for the error when one is missing on a fresh clone.
BUILT_BY = {"runs/tokenizers/sst_wordpiece": (
    "`.venv/bin/python scripts/make_pretrain_corpus.py && .venv/bin/jaxlm train-tokenizer "
    "--data text:runs/corpus/pretrain.txt --kind wordpiece --vocab-size 8000 "
    "--out runs/tokenizers/sst_wordpiece` (the first steps of scripts/sst_experiments.sh).")}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json file, or the tokenizer.json inside a directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        built_by = next((cmd for folder, cmd in BUILT_BY.items()
                         if p.parent.as_posix().endswith(folder)), None)
        how = (f" It is built from the repository's own data; from the repository root run: "
               f"{built_by}" if built_by else " Point data.tokenizer.path at a Hugging Face "
               "tokenizer.json (or the directory holding one), build one with `jaxlm "
               "train-tokenizer --data SPEC --kind wordpiece --vocab-size N --out DIR`, or leave "
               "it empty to train a tokenizer with the run.")
        raise DataError(f"Tokenizer file '{p}' does not exist.{how}", culprit=str(p))
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
        raise DataError(f"Tokenizer file '{p}' could not be read ({e}). It must be a Hugging Face "
                        "tokenizer.json, as written by `tokenizers` or `jaxlm train-tokenizer`.",
                        culprit=str(p)) from None


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token ids the pipelines need."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()

        def find(*names: str) -> int | None:
            for n in names:
                if n in vocab:
                    return vocab[n]
            return None

        self.pad_id = find("[PAD]", "<pad>", "<|pad|>")
        self.unk_id = find("[UNK]", "<unk>")
        self.cls_id = find("[CLS]", "<s>", "<|begin_of_text|>")
        self.sep_id = find("[SEP]", "</s>", "<|endoftext|>", "<|end_of_text|>")
        self.mask_id = find("[MASK]", "<mask>")

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added special tokens."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of one text (no [CLS]/[SEP] unless asked)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of many texts (tokenized in parallel by the Rust library)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts),
                                                           add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids, special tokens dropped by default."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename): a killed process leaves no torn file."""
        from jaxlm.atomic import write_atomic
        write_atomic(path, self.tokenizer.save)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Load a tokenizer.json."""
        return cls(load_tokenizer(path))


def iter_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Split a long text into pieces for tokenizer training (it is line-agnostic)."""
    for i in range(0, len(text), size):
        yield text[i:i + size]
