"""grain pipelines: packing (segments never see each other, no token lost), exact resume of every
pipeline, host sharding, masked-LM statistics, classification buckets and exactly-once eval."""
import json
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxlm.data.classification import classification_dataset, classification_eval_batches
from jaxlm.data.iterators import DataIterator
from jaxlm.data.lm_pipeline import train_dataset
from jaxlm.data.masking import MaskSpec, mask_tokens
from jaxlm.data.packing import (DocEncoder, host_documents, pack, packed_rows,
                                packed_train_dataset)
from jaxlm.data.sources import ListSource, SourceOptions, Spec, open_source
from jaxlm.data.local import DataReport
from jaxlm.data.tokenizer import SPECIAL_TOKENS, TextTokenizer, train_tokenizer
from jaxlm.models.layers import attention_mask

N_DOCS = 60


def word_tokenizer(n_words: int = 400) -> TextTokenizer:
    """Words w0..w{n-1}: a token id says which word (and so which document) it is."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for i in range(n_words):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TextTokenizer(tok)


def doc_source(n: int = N_DOCS, labels: bool = False) -> ListSource:
    """Document i repeats word w{i}, (i % 23) + 2 times: every token names its document."""
    texts = [" ".join([f"w{i}"] * (i % 23 + 2)) for i in range(n)]
    spec = Spec("text", "synthetic", None, SourceOptions(), "synthetic")
    return ListSource(spec, "train", texts, [i % 3 for i in range(n)] if labels else None,
                      ["a", "b", "c"] if labels else None, DataReport("synthetic"))


def doc_of(ids: np.ndarray, tok: TextTokenizer) -> np.ndarray:
    return ids - len(SPECIAL_TOKENS)  # word w{i} has id i + 5


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# Packing


@pytest.mark.parametrize("packing", ["concat", "first_fit"])
def test_packing_never_lets_documents_see_each_other_and_loses_no_token(packing):
    # features are (document, position) codes, so every token can be traced back
    docs = [np.arange(n, dtype=np.int32) + 1000 * (d + 1) for d, n in
            enumerate([3, 17, 40, 1, 9, 33, 16, 16, 70, 5, 2, 12])]
    feats = [{"inputs": x, "targets": x, "weights": np.ones(len(x), np.float32)} for x in docs]
    rows = list(pack(grain.MapDataset.source(feats).to_iter_dataset(), 16, packing, seed=3))
    seg = np.stack([r["segment_ids"] for r in rows])
    tokens = np.stack([r["inputs"] for r in rows])
    mask = np.asarray(attention_mask(jnp.asarray(seg), causal=True))[:, 0]  # [rows, q, k]
    doc = tokens // 1000
    for r in range(len(rows)):
        q, k = np.nonzero(mask[r])
        assert (doc[r, q] == doc[r, k]).all(), "attention crosses documents"
        assert (seg[r, q] > 0).all() and (seg[r, k] > 0).all(), "padding is attended"
        # and inside a piece of a document, every earlier token is visible
        for s in set(seg[r][seg[r] > 0]):
            idx = np.flatnonzero(seg[r] == s)
            assert mask[r][np.ix_(idx, idx)].sum() == len(idx) * (len(idx) + 1) // 2
            pos = rows[r]["positions"][idx]
            assert np.array_equal(pos, np.arange(len(idx)))
    kept = np.sort(tokens[seg > 0])
    assert np.array_equal(kept, np.sort(np.concatenate(docs))), "tokens lost or duplicated"
    assert np.array_equal(np.stack([r["weights"] for r in rows]) > 0, seg > 0)
    if packing == "concat":
        assert (seg[:-1] > 0).all()  # full rows except the last


def test_packed_eval_rows_keep_every_target_once():
    tok = word_tokenizer()
    src = doc_source()
    rows = packed_rows(src, DocEncoder(tok, "causal"), seq_len=32)
    n_targets = sum(i % 23 + 2 for i in range(N_DOCS))  # n words + [SEP] -> n predictions
    assert sum(r["weights"].sum() for r in rows) == n_targets
    # within a document segment, targets are the next tokens of that document
    for r in rows:
        seg, x, y = r["segment_ids"], r["inputs"], r["targets"]
        for s in set(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            assert len(set(doc_of(x[idx], tok))) == 1
            assert set(y[idx]) <= {x[idx][0], tok.sep_id}


def test_two_hosts_read_disjoint_documents_that_cover_the_epoch():
    src = doc_source()
    seen = []
    for h in range(2):
        docs = host_documents(src, seed=5, process_index=h, process_count=2)
        seen.append([docs[i]["text"] for i in range(N_DOCS // 2)])
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {src[i]["text"] for i in range(N_DOCS)}
    # next epoch: a different order, again covering everything
    d0 = host_documents(src, seed=5)
    epoch0 = [d0[i]["text"] for i in range(N_DOCS)]
    epoch1 = [d0[i]["text"] for i in range(N_DOCS, 2 * N_DOCS)]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    # whole packed pipelines on 2 hosts: half the rows each, documents disjoint
    tok = word_tokenizer()
    docs_by_host = []
    for h in range(2):
        it = iter(packed_train_dataset(src, DocEncoder(tok), seq_len=16, global_batch=4, seed=5,
                                       process_index=h, process_count=2, shuffle_window=1))
        b = next(it)
        assert b["inputs"].shape == (2, 16) and isinstance(it, DataIterator) and it.per_host
        docs_by_host.append(set(doc_of(b["inputs"][b["segment_ids"] > 0], tok)) - {-2})
    assert not docs_by_host[0] & docs_by_host[1]


# ---------------------------------------------------------------------------------------------
# Exact resume: 50 batches after a restore equal the uninterrupted run's


def _resume_check(batches, skip: int = 7, n: int = 50) -> None:
    it = iter(batches)
    for _ in range(skip):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as stored in the checkpoint
    expected = [next(it) for _ in range(n)]
    fresh = iter(batches)
    fresh.set_state(state)
    assert same([next(fresh) for _ in range(n)], expected)


@pytest.fixture(scope="module")
def shakespeare_docs(data_dir) -> tuple:
    src = open_source(f"text:{data_dir}/tinyshakespeare/input.txt?documents=blank_line")
    tok = TextTokenizer(train_tokenizer(src.texts(), "char"))
    return src, tok


@pytest.mark.parametrize("objective,packing", [("causal", "concat"), ("masked", "first_fit"),
                                               ("masked", "concat")])
def test_packed_pipeline_resumes_exactly(shakespeare_docs, objective, packing):
    src, tok = shakespeare_docs
    mask = MaskSpec.for_tokenizer(tok, whole_word=True) if objective == "masked" else None
    ds = packed_train_dataset(src, DocEncoder(tok, objective, mask, seed=1), seq_len=64,
                              global_batch=8, seed=1, packing=packing)
    _resume_check(ds)


def test_random_windows_and_classification_resume_exactly(shakespeare_docs, data_dir):
    _, tok = shakespeare_docs
    stream = np.random.default_rng(0).integers(5, 60, 20_000).astype(np.int32)
    _resume_check(train_dataset(stream, seq_len=32, global_batch=4, num_steps=100, seed=0))
    mask = MaskSpec.for_tokenizer(tok)
    _resume_check(train_dataset(stream, seq_len=32, global_batch=4, num_steps=100, seed=0,
                                mask=mask))
    sst = open_source(f"labeled:{data_dir}/sst2")
    wp = TextTokenizer(train_tokenizer(sst.texts(), "wordpiece", 2000))
    _resume_check(classification_dataset(sst, wp, seq_len=64, global_batch=16, num_steps=100,
                                          seed=0))


def test_multi_host_state_is_gathered_and_each_host_restores_its_own(shakespeare_docs):
    src, tok = shakespeare_docs
    its = [iter(packed_train_dataset(src, DocEncoder(tok), seq_len=32, global_batch=4, seed=0,
                                     process_index=h, process_count=2)) for h in range(2)]
    for it in its:
        for _ in range(3):
            next(it)
    local = [json.dumps(it._it.get_state()).encode() for it in its]
    for it in its:  # what the all-gather would return on every host
        it._gather = lambda _blob: list(local)
    states = [it.get_state() for it in its]
    assert states[0] == states[1] and len(states[0]["hosts"]) == 2
    expected = [[next(it) for _ in range(5)] for it in its]
    for h in range(2):
        again = iter(packed_train_dataset(src, DocEncoder(tok), seq_len=32, global_batch=4,
                                          seed=0, process_index=h, process_count=2))
        again.set_state(json.loads(json.dumps(states[0])))
        assert same([next(again) for _ in range(5)], expected[h])


def test_random_windows_host_shards_partition_the_global_batch():
    stream = np.arange(5_000, dtype=np.int32)
    one = iter(train_dataset(stream, seq_len=16, global_batch=8, num_steps=10, seed=2))
    two = [iter(train_dataset(stream, seq_len=16, global_batch=8, num_steps=10, seed=2,
                              process_index=h, process_count=2)) for h in range(2)]
    for _ in range(10):
        g = next(one)
        parts = [next(it) for it in two]
        assert np.array_equal(np.concatenate([p["inputs"] for p in parts]), g["inputs"])


def test_random_windows_rows_are_the_documented_draws():
    """Row j of step s is the window at the offset drawn from default_rng([seed, s * B + j]):
    the data a run sees (and so its losses) stays what earlier releases gave, whatever the
    pipeline's internals, and a checkpoint's iterator position counts batches."""
    stream = np.arange(3, 5_003, dtype=np.uint16)
    T, B = 16, 6
    it = iter(train_dataset(stream, seq_len=T, global_batch=B, num_steps=7, seed=5))
    for s in range(4):
        batch = next(it)
        assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
        for j in range(B):
            off = int(np.random.default_rng([5, s * B + j]).integers(0, len(stream) - T))
            window = stream[off:off + T + 1].astype(np.int32)
            assert np.array_equal(batch["inputs"][j], window[:-1])
            assert np.array_equal(batch["targets"][j], window[1:])
        assert np.all(batch["weights"] == 1)
    assert it.get_state()["grain"] == {"next_index": 4}


# ---------------------------------------------------------------------------------------------
# Masked LM


def test_mlm_masking_statistics():
    tok = word_tokenizer()
    spec = MaskSpec.for_tokenizer(tok)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, tok.vocab_size, 200_000).astype(np.int32)
    ids[::50] = tok.sep_id  # special tokens are never chosen
    out = mask_tokens(ids, np.random.default_rng(1), spec)
    chosen = out["weights"] > 0
    assert np.array_equal(out["targets"], ids)
    assert not chosen[ids == tok.sep_id].any()
    assert abs(chosen[ids != tok.sep_id].mean() - 0.15) < 0.004
    masked = out["inputs"][chosen] == tok.mask_id
    unchanged = out["inputs"][chosen] == ids[chosen]
    randomized = ~masked & ~unchanged
    assert abs(masked.mean() - 0.8) < 0.01
    assert abs(randomized.mean() - 0.1) < 0.01
    assert abs(unchanged.mean() - 0.1) < 0.01  # (a random token equal to the original counts here)
    assert np.array_equal(out["inputs"][~chosen], ids[~chosen])
    assert not np.isin(out["inputs"][chosen][randomized], spec.special_ids).any()


def test_whole_word_masking_chooses_all_pieces_of_a_word(shakespeare_docs):
    src, _ = shakespeare_docs
    wp = TextTokenizer(train_tokenizer((src[i]["text"] for i in range(2000)), "wordpiece", 800))
    spec = MaskSpec.for_tokenizer(wp, whole_word=True)
    enc = wp.tokenizer.encode(" ".join(src[i]["text"] for i in range(300)))
    out = mask_tokens(np.asarray(enc.ids), np.random.default_rng(0), spec, enc.word_ids)
    words = np.asarray(enc.word_ids)
    chosen = out["weights"] > 0
    multi = 0
    for w in np.unique(words):
        pieces = chosen[words == w]
        assert pieces.all() or not pieces.any()
        multi += int(pieces.all() and len(pieces) > 1)
    assert multi > 10  # words of several pieces were masked as a unit
    assert 0.1 < chosen.mean() < 0.2


def test_packed_mlm_batches_score_only_masked_tokens(shakespeare_docs):
    src, tok = shakespeare_docs
    ds = packed_train_dataset(src, DocEncoder(tok, "masked", MaskSpec.for_tokenizer(tok)),
                              seq_len=64, global_batch=8, seed=0)
    it = iter(ds)
    batches = [next(it) for _ in range(20)]
    w = np.concatenate([b["weights"].ravel() for b in batches])
    real = np.concatenate([(b["segment_ids"] > 0).ravel() for b in batches])
    assert 0.13 < w.sum() / real.sum() < 0.17
    for b in batches:
        assert set(b) == {"inputs", "targets", "weights", "segment_ids", "positions"}
        changed = b["inputs"] != b["targets"]
        assert (b["weights"][changed] > 0).all()  # every corrupted token is scored


# ---------------------------------------------------------------------------------------------
# Classification


def test_fitted_buckets_follow_the_batches_longest_examples():
    from jaxlm.data.classification import fitted_buckets
    # batches whose longest examples spread over 36..64: a few multiples of 8, seq_len last
    longest = np.random.default_rng(0).integers(36, 65, 500)
    b = fitted_buckets(longest, 64)
    assert b[-1] == 64 and 2 <= len(b) <= 4 and all(x % 8 == 0 for x in b)
    padded = np.mean([min(x for x in b if x >= n) for n in longest])
    assert padded < 0.9 * 64  # fixed powers of two (16/32/64) pad every one of them to 64
    # every batch as long as seq_len, or all of one length: one program
    assert fitted_buckets([64] * 10, 64) == [64]
    assert fitted_buckets([20] * 10, 64) == [24, 64]
    assert fitted_buckets([], 64) == [64]
    assert fitted_buckets(longest, 64, most=1) == [64]
    assert fitted_buckets([5, 300], 128) == [8, 128]  # longer than seq_len: cut to it


def test_classification_buckets_fit_the_data_unless_configured(data_dir):
    """Without data.length_buckets, training and evaluation batches pad to buckets fitted to
    their own longest examples, far less than to seq_len; the same every time (resume)."""
    sst = open_source(f"labeled:{data_dir}/sst2:validation")
    tok = TextTokenizer(train_tokenizer(sst.texts(), "wordpiece", 1500))
    kw = dict(seq_len=128, global_batch=16)
    ev = classification_eval_batches(sst, tok, **kw)
    shapes = [b["inputs"].shape[1] for b in ev]
    assert 1 < len(set(shapes)) <= 4 and max(shapes) <= 128
    assert sum(shapes) < 0.9 * len(ev) * 128
    for b in ev:  # every example fits its batch's bucket
        assert (b["segment_ids"].sum(1) <= b["inputs"].shape[1]).all()
    train = [list(iter(classification_dataset(sst, tok, num_steps=30, seed=1, **kw)))
             for _ in range(2)]
    assert [b["inputs"].shape for b in train[0]] == [b["inputs"].shape for b in train[1]]
    assert len({b["inputs"].shape[1] for b in train[0]}) > 1


def test_classification_batches_buckets_hosts_and_exactly_once_eval(data_dir):
    sst = open_source(f"labeled:{data_dir}/sst2:validation")
    tok = TextTokenizer(train_tokenizer(sst.texts(), "wordpiece", 1500))
    kw = dict(seq_len=64, global_batch=16, buckets=[16, 32, 64])
    ev = classification_eval_batches(sst, tok, **kw)
    assert len(ev) == 55 and sum(b["weights"].sum() for b in ev) == 872
    assert {b["inputs"].shape[1] for b in ev} <= {16, 32, 64} and len(ev[-1]["weights"]) == 16
    assert ev[0]["inputs"][0, 0] == tok.cls_id
    last = ev[-1]
    assert (last["weights"][8:] == 0).all() and (last["weights"][:8] == 1).all()
    labels = np.concatenate([b["labels"][b["weights"] > 0] for b in ev])
    assert np.array_equal(labels, [sst[i]["label"] for i in range(872)])
    # two hosts: their rows together are the one-host batch, for training and evaluation
    halves = [classification_eval_batches(sst, tok, process_index=h, process_count=2, **kw)
              for h in range(2)]
    for s, b in enumerate(ev):
        assert np.array_equal(np.concatenate([halves[0][s]["inputs"], halves[1][s]["inputs"]]),
                              b["inputs"])
    one = iter(classification_dataset(sst, tok, num_steps=200, seed=3, **kw))
    two = [iter(classification_dataset(sst, tok, num_steps=200, seed=3, process_index=h,
                                       process_count=2, **kw)) for h in range(2)]
    steps = [next(one) for _ in range(54)]  # 54 * 16 = 864 of 872: most of epoch one
    for g in steps[:5]:
        parts = [next(it) for it in two]
        assert np.array_equal(np.concatenate([p["labels"] for p in parts]), g["labels"])
    texts = [tok.decode(row) for b in steps for row in b["inputs"]]
    assert len(set(texts)) >= 855  # no example twice within the epoch (a few texts repeat)
