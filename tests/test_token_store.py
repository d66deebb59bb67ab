"""The token store (jaxlm.data.token_store) and streamed text files (jaxlm.data.text_stream):
the same tokens and batches as the in-memory path, reuse, stale and truncated stores, bounded
memory on a large file, and exact resume of a killed run reading from the store."""
import os
import signal
import time
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxlm.config import load_config
from jaxlm.data import lm_data, token_store
from jaxlm.data.lm_pipeline import eval_batches, train_dataset
from jaxlm.data.sources import SourceOptions, open_source, parse_spec
from jaxlm.data.text_stream import TextFileSource
from jaxlm.data.tokenizer import TextTokenizer, iter_chunks, train_tokenizer
from jaxlm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\r\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.  \n   indented line\n\n\n\u00e9t\u00e9 \u2014 na\u00efve \U0001f600\n"
        "\tYou are all resolved rather to die than to famish?\n\nlast line without newline")


def _cfg(corpus: Path, cache: Path, *sets: str):
    return load_config(str(REPO / "configs/shakespeare_char.yaml"),
                       [f"data.train=text:{corpus}", f"data.token_cache={cache}", *sets])


def _old_sources(cfg):
    """The in-memory path: the file read whole, then held out (what jaxlm did before)."""
    spec = parse_spec(cfg.resolve_path(cfg.data.train), SourceOptions.from_config(cfg.data))
    return lm_data.holdout(open_source(spec, "train"), cfg.data.val_fraction)


def _old_tokenizer_texts(source):
    return iter_chunks(source[0]["text"]) if len(source) == 1 else source.texts()


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("documents", ["file", "line", "blank_line"])
def test_store_equals_in_memory_tokens(tmp_path, kind, documents):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 300, encoding="utf-8", newline="")
    cfg = _cfg(corpus, tmp_path / "cache", f"data.documents={documents}",
               f"data.tokenizer.kind={kind}", "data.tokenizer.vocab_size=300")
    train, val = lm_data.load_lm_sources(cfg)
    old_train, old_val = _old_sources(cfg)
    assert isinstance(train, TextFileSource) and len(train) == len(old_train)
    assert len(val) == len(old_val)
    tok = TextTokenizer(train_tokenizer(lm_data.tokenizer_texts(train), kind, 300))
    old_tok = TextTokenizer(train_tokenizer(_old_tokenizer_texts(old_train), kind, 300))
    assert tok.tokenizer.to_str() == old_tok.tokenizer.to_str()
    for new, old in ((train, old_train), (val, old_val)):
        got = lm_data.corpus_tokens(cfg, tok, new)
        assert isinstance(got, token_store.TokenFile) and got.dtype == np.uint16
        want = lm_data.token_stream(tok, old)
        assert len(want) > 100
        np.testing.assert_array_equal(np.asarray(got, np.int32), want)
    if documents != "file":  # packed sampling reads the same documents, as ids
        store = lm_data.packed_documents(cfg, tok, train)
        assert len(store) == len(old_train)
        for i in (0, 1, len(store) - 1):
            assert store[i]["ids"].tolist() == tok.encode(old_train[i]["text"])


def test_main_job_batches_identical_to_in_memory_path(data_dir, tmp_path):
    """configs/shakespeare_char.yaml (shortened): the same tokenizer, train and validation
    batches as the in-memory path, so its results do not change."""
    corpus = data_dir / "tinyshakespeare" / "input.txt"
    cfg = _cfg(corpus, tmp_path / "cache", "train.steps=40")
    train, val = lm_data.load_lm_sources(cfg)
    old_train, old_val = _old_sources(cfg)
    tok = TextTokenizer(train_tokenizer(lm_data.tokenizer_texts(train), "char"))
    old_tok = TextTokenizer(train_tokenizer(_old_tokenizer_texts(old_train), "char"))
    assert tok.tokenizer.to_str() == old_tok.tokenizer.to_str()
    d, t = cfg.data, cfg.train
    old = train_dataset(lm_data.token_stream(tok, old_train), seq_len=d.seq_len,
                        global_batch=t.batch_size, num_steps=t.steps, seed=t.seed)
    new = lm_data.lm_train_batches(cfg, tok, train)
    n = 0
    for a, b in zip(old, new):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
        n += 1
    assert n == t.steps
    old_eval = eval_batches(lm_data.token_stream(tok, old_val), seq_len=d.seq_len,
                            global_batch=t.batch_size, seed=t.seed + 7919)
    new_eval = lm_data.lm_eval_batches(cfg, tok, val)
    assert len(old_eval) == len(new_eval) > 100
    for a, b in zip(old_eval, new_eval):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def _store(corpus: Path, cache: Path, *sets: str):
    cfg = _cfg(corpus, cache, *sets)
    train, _ = lm_data.load_lm_sources(cfg)
    tok = TextTokenizer(train_tokenizer(lm_data.tokenizer_texts(train), "char"))
    return cfg, train, tok


def test_reuse_stale_truncated_and_foreign(tmp_path, capsys):
    corpus, cache = tmp_path / "c.txt", tmp_path / "cache"
    corpus.write_text(TEXT * 50)
    cfg, train, tok = _store(corpus, cache)
    before = token_store.builds["count"]
    first = token_store.open_store(train, tok, cache)
    assert token_store.builds["count"] == before + 1
    mtime = (first.path / "tokens.bin").stat().st_mtime_ns
    # reuse: a later run (new sources, same tokenizer) reads the same files
    cfg, train, tok = _store(corpus, cache)
    again = token_store.open_store(train, tok, cache)
    assert token_store.builds["count"] == before + 1 and again.path == first.path
    assert (first.path / "tokens.bin").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in first.path.iterdir()) == sorted(token_store.FILES)
    # stale: the file changed (size and mtime) -> rebuilt in place, with the new text's tokens
    corpus.write_text(TEXT * 60)
    os.utime(corpus, ns=(time.time_ns(), time.time_ns() + 10**9))
    cfg, train, tok = _store(corpus, cache)
    fresh = token_store.open_store(train, tok, cache)
    assert token_store.builds["count"] == before + 2
    want = lm_data.token_stream(tok, _old_sources(cfg)[0])
    np.testing.assert_array_equal(np.asarray(fresh.tokens, np.int32), want)
    assert not first.path.exists() or first.path == fresh.path  # the old version's store went
    assert len([d for d in cache.iterdir() if d.name.startswith("c-train-")]) == 1
    # truncated (a partial copy): detected by its size, rebuilt, with a warning
    with (fresh.path / "tokens.bin").open("r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    fixed = token_store.open_store(train, tok, cache)
    assert "truncated or partial" in capsys.readouterr().err
    assert token_store.builds["count"] == before + 3
    np.testing.assert_array_equal(np.asarray(fixed.tokens, np.int32), want)
    # meta.json gone (a store cut short): rebuilt too
    (fixed.path / "meta.json").unlink()
    token_store.open_store(train, tok, cache)
    assert token_store.builds["count"] == before + 4
    # a folder jaxlm did not write is neither used nor deleted
    (fixed.path / token_store.MARKER).unlink()
    with pytest.raises(DataError, match="not written by jaxlm"):
        token_store.open_store(train, tok, cache)
    assert (fixed.path / "tokens.bin").is_file()
    # leftovers of a killed build are removed; nothing but stores and scans in the cache
    assert {p.name.split("-")[0] for p in cache.iterdir()} <= {"c", "scans"}


def test_large_file_is_streamed_not_read_whole(tmp_path, data_dir, monkeypatch):
    """A ~50 MB file: scanned, held out, fed to tokenizer training and tokenised with a small,
    bounded Python memory peak, and never through the whole-file readers."""
    lines = (data_dir / "tinyshakespeare" / "input.txt").read_text().splitlines(keepends=True)
    rng = np.random.default_rng(0)
    corpus = tmp_path / "big.txt"
    with corpus.open("w") as f:
        for _ in range(36):
            f.write("".join(lines[i] for i in rng.integers(0, len(lines), 50_000)))
    size = corpus.stat().st_size
    assert size > 45e6

    def whole(*a, **k):
        raise AssertionError("a whole-file reader was used")

    monkeypatch.setattr("jaxlm.data.local.read_text", whole)
    monkeypatch.setattr("jaxlm.data.text.read_text", whole)
    monkeypatch.setattr(Path, "read_bytes", whole)
    tracemalloc.start()
    try:
        cfg, train, tok = _store(corpus, tmp_path / "cache")
        tokens = lm_data.corpus_tokens(cfg, tok, train)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tokens) == int(train.stats.chars * 0.9)
    assert peak < 20e6, f"peak Python memory {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
    assert np.asarray(tokens[-1000:]).tolist() == tok.encode("".join(train.pieces())[-1000:])


def test_exact_resume_after_sigkill_through_the_store(tiny_corpus, tmp_path, token_cache):
    """A run killed after a checkpoint and rerun (reusing the store, not tokenising again)
    ends in the same train state as an uninterrupted one, bit for bit."""
    import test_reliability_kill as kill

    big = tmp_path / "corpus.txt"  # a fresh file: its store is built by the first process
    big.write_text(tiny_corpus.read_text())
    (tmp_path / "jit").mkdir()
    ref, run = kill._runs(tmp_path, big, tmp_path / "jit")
    ref.start()
    assert ref.finish()[0] == 0
    assert "tokenising" in ref.err_path.read_text()
    run.start()
    assert run.wait_until(lambda: max(run.steps(), default=0) >= 20)
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish()[0] == -signal.SIGKILL
    killed_at = max(run.steps())
    assert 0 < killed_at < kill.STEPS
    run.start()
    rc, err = run.finish()
    assert rc == 0, err
    assert "tokenising" not in err  # the store was reused
    # the train state (params, optimizer, step, RNG) and the data position, bit for bit; not
    # kill._assert_same_final_state, whose guard fails whenever anyone edits jaxlm meanwhile
    ref_state, ref_data = kill._final_state(ref.dir)
    state, data = kill._final_state(run.dir)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_state)[0]
    flat = dict(jax.tree_util.tree_flatten_with_path(state)[0])
    assert len(flat_ref) == len(flat) > 10
    for path, a in flat_ref:
        np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(a))
    assert data == ref_data


def test_one_document_of_a_line_file_is_split_by_characters(tmp_path):
    """A documents=line file with a single line is held out by characters, as before."""
    corpus = tmp_path / "one.txt"
    corpus.write_text("a single long line of text " * 40 + "\n\n")
    cfg = _cfg(corpus, tmp_path / "cache", "data.documents=line", "data.seq_len=8")
    train, val = lm_data.load_lm_sources(cfg)
    old_train, old_val = _old_sources(cfg)
    assert train[0]["text"] == old_train[0]["text"] and val[0]["text"] == old_val[0]["text"]


def test_unwritable_cache_is_one_clear_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 20)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg, train, tok = _store(corpus, blocker / "cache")
    from jaxlm.errors import OutputError
    with pytest.raises(OutputError, match="token store.*data.token_cache"):
        lm_data.corpus_tokens(cfg, tok, train)


def test_train_tokenizer_cli_streams_a_text_file(tmp_path, monkeypatch, capsys):
    """`jaxlm train-tokenizer --data text:FILE` learns the same vocabulary without reading the
    file whole; an empty file is still refused."""
    from jaxlm.cli import main
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 30)
    want = train_tokenizer(iter_chunks(corpus.read_bytes().decode()), "bpe", 300).to_str()

    def whole(*a, **k):
        raise AssertionError("a whole-file reader was used")

    monkeypatch.setattr("jaxlm.data.local.read_text", whole)
    assert main(["train-tokenizer", "--data", f"text:{corpus}", "--kind", "bpe",
                 "--vocab-size", "300", "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    assert TextTokenizer.load(tmp_path / "tok").tokenizer.to_str() == want
    (tmp_path / "empty.txt").write_text("\n \n")
    assert main(["train-tokenizer", "--data", f"text:{tmp_path / 'empty.txt'}", "--kind", "char",
                 "--out", str(tmp_path / "tok2"), "--quiet"]) == 2
    assert "no text to train on" in capsys.readouterr().err


def test_validation_batches_are_made_on_access():
    """The whole-split evaluation of a large validation stream holds a few batches, not all."""
    tokens = (np.arange(2_000_000) % 61).astype(np.uint16)
    tracemalloc.start()
    try:
        batches = eval_batches(tokens, seq_len=64, global_batch=12)
        n = sum(int(b["weights"].sum()) for b in batches)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(batches) == 2605 and n == (len(tokens) - 1) // 64 * 64
    assert peak < 2e6, peak  # the batches as a list: about 24 MB
    assert batches[-1]["weights"][-1].sum() == 0 and batches[3:5][1]["inputs"][0, 0] == (
        4 * 12 * 64) % 61
