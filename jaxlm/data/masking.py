"""Masked-LM corruption (BERT): choose ~15% of the tokens to predict; of those, 80% become [MASK],
10% a random token and 10% stay as they are. Optionally whole words are chosen together.

The choice is a pure function of (seed, example index), so a resumed run masks exactly as an
uninterrupted one would, and every epoch masks differently (RoBERTa's dynamic masking).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from jaxlm.errors import DataError


@dataclass(frozen=True)
class MaskSpec:
    """What masking needs from the tokenizer and the config."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()
    prob: float = 0.15
    whole_word: bool = False
    replace_ids: np.ndarray = field(default=None, compare=False)  # ids used as random replacements

    def __post_init__(self):
        if not 0.0 < self.prob < 1.0:
            raise DataError(f"data.mask_prob must be in (0, 1), got {self.prob}.",
                            culprit="data.mask_prob")
        if self.replace_ids is None:
            ids = np.setdiff1d(np.arange(self.vocab_size), np.asarray(self.special_ids, np.int64))
            object.__setattr__(self, "replace_ids", ids.astype(np.int32))

    @classmethod
    def for_tokenizer(cls, tok, prob: float = 0.15, whole_word: bool = False) -> "MaskSpec":
        """The spec for a tokenizer's [MASK] and special ids; refuses a tokenizer without a mask
        token."""
        if tok.mask_id is None:
            raise DataError("Masked-LM training needs a mask token, and this tokenizer has none "
                            "([MASK] or <mask>). Train one with jaxlm train-tokenizer (it adds "
                            "[MASK]) or use a tokenizer.json that has it.", culprit="[MASK]")
        special = tuple(i for i in (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
                        if i is not None)
        return cls(mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=special,
                   prob=prob, whole_word=whole_word)


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, spec: MaskSpec,
                word_ids: Sequence[int | None] | None = None
                ) -> dict[str, np.ndarray]:
    """Corrupt one sequence. Returns {inputs, targets, weights}: weights 1 at predicted tokens.

    Special tokens are never chosen. With `spec.whole_word` and `word_ids` (one entry per token,
    None for special tokens, as `tokenizers` reports them), all pieces of a chosen word are
    chosen together. At least one token is chosen when any can be, so no example is unscored.
    """
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    candidate = ~np.isin(ids, np.asarray(spec.special_ids, np.int32))
    if spec.whole_word and word_ids is not None:
        words = np.array([-1 if w is None else w for w in word_ids], np.int64)
        words[~candidate] = -1
        uniq = np.unique(words[words >= 0])
        chosen_words = uniq[rng.random(len(uniq)) < spec.prob]
        if len(chosen_words) == 0 and len(uniq):
            chosen_words = uniq[rng.integers(len(uniq))][None]
        chosen = np.isin(words, chosen_words) & (words >= 0)
    else:
        chosen = candidate & (rng.random(n) < spec.prob)
        if not chosen.any() and candidate.any():
            chosen[rng.choice(np.flatnonzero(candidate))] = True
    action = rng.random(n)
    inputs = ids.copy()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    inputs[to_mask] = spec.mask_id
    if to_random.any():
        inputs[to_random] = rng.choice(spec.replace_ids, size=int(to_random.sum()))
    return {"inputs": inputs, "targets": ids, "weights": chosen.astype(np.float32)}
