"""Generative fine-tuning data: templates, target-only weights, packing, order and resume, and
the errors for records that cannot become examples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data.generative import (Pairs, encode_pairs, eval_batches, pack_epoch, rows_of,
                                   train_dataset)
from jaxlm.data.iterators import take
from jaxlm.data.records import holdout_records, open_records
from jaxlm.data.sources import parse_spec
from jaxlm.data.templates import Templates, find_chat_template, render_chat
from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
from jaxlm.errors import DataError

RECORDS = [{"q": "What is two plus two?", "a": "four"},
           {"q": "Name a colour.", "a": "blue"},
           {"q": "Capital of France?", "a": "Paris"},
           {"q": "Opposite of hot?", "a": "cold"},
           {"q": "How many legs has a spider?", "a": "eight"},
           {"q": "Say hello.", "a": "hello there"}]


def _jsonl(tmp_path: Path, records: list[dict], name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _tok(texts: list[str]) -> TextTokenizer:
    return TextTokenizer(train_tokenizer(texts, "char"))


def _source(tmp_path: Path, records: list[dict] = RECORDS):
    return open_records(parse_spec(f"jsonl:{_jsonl(tmp_path, records)}"), "train")


TEMPLATES = Templates("Q: {q}\nA:", " {a}")


def _pairs(tmp_path: Path, seq_len: int = 64, **kw) -> tuple[Pairs, TextTokenizer]:
    tok = _tok([r["q"] + r["a"] + "QA: \n" for r in RECORDS])
    return encode_pairs(_source(tmp_path), tok, TEMPLATES, seq_len=seq_len, **kw), tok


def test_weights_score_exactly_the_target_and_the_end_token(tmp_path):
    pairs, tok = _pairs(tmp_path)
    batch = rows_of(pairs, [[i] for i in range(len(pairs))], 64)
    for i in range(len(pairs)):
        w = batch["weights"][i]
        scored = batch["targets"][i][w > 0].tolist()
        assert tok.decode(scored[:-1]) == " " + RECORDS[i]["a"]
        assert scored[-1] == tok.sep_id  # the model learns to stop
        first = int(np.argmax(w > 0))
        assert tok.decode(batch["inputs"][i][:first + 1].tolist()) == f"Q: {RECORDS[i]['q']}\nA:"
        assert w.sum() == pairs.target_len(i)


def test_packed_rows_isolate_examples_with_segments_and_positions(tmp_path):
    pairs, _ = _pairs(tmp_path)
    order = np.arange(len(pairs))
    groups = pack_epoch(np.array([len(x) - 1 for x in pairs.ids]), order, 64)
    assert sorted(i for g in groups for i in g) == list(range(len(pairs)))
    assert max(len(g) for g in groups) > 1
    batch = rows_of(pairs, groups, 64)
    alone = rows_of(pairs, [[i] for i in range(len(pairs))], 64)
    for r, group in enumerate(groups):
        at = 0
        for seg, i in enumerate(group, 1):
            n = len(pairs.ids[i]) - 1
            assert (batch["segment_ids"][r, at:at + n] == seg).all()
            assert batch["positions"][r, at:at + n].tolist() == list(range(n))
            for k in ("inputs", "targets", "weights"):
                np.testing.assert_array_equal(batch[k][r, at:at + n], alone[k][i, :n])
            at += n
        assert (batch["segment_ids"][r, at:] == 0).all() and batch["weights"][r, at:].sum() == 0


def test_pack_epoch_never_overfills_and_places_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=500)
    groups = pack_epoch(lengths, rng.permutation(500), 64)
    assert sorted(i for g in groups for i in g) == list(range(500))
    assert all(lengths[g].sum() <= 64 for g in groups)
    assert lengths.sum() / (64 * len(groups)) > 0.85  # first-fit fills rows well


def test_training_stream_is_seeded_resumable_and_split_across_hosts(tmp_path):
    pairs, _ = _pairs(tmp_path, seq_len=48)
    kw = dict(seq_len=48, global_batch=4, num_steps=12, seed=3)
    a = take(iter(train_dataset(pairs, **kw)), 12)
    b = take(iter(train_dataset(pairs, **kw)), 12)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in
               zip(a, take(iter(train_dataset(pairs, **{**kw, "seed": 4})), 12)))
    it = iter(train_dataset(pairs, **kw))
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    resumed = iter(train_dataset(pairs, **kw))
    resumed.set_state(state)
    for x, y in zip(take(resumed, 7), a[5:]):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    hosts = [take(iter(train_dataset(pairs, **kw, process_index=h, process_count=2)), 12)
             for h in range(2)]
    for s in range(12):
        np.testing.assert_array_equal(np.concatenate([hosts[0][s]["inputs"],
                                                      hosts[1][s]["inputs"]]), a[s]["inputs"])


def test_padded_mode_one_example_per_row_in_a_length_bucket(tmp_path):
    pairs, _ = _pairs(tmp_path)
    batches = take(iter(train_dataset(pairs, seq_len=64, global_batch=3, num_steps=4, seed=0,
                                      packed=False)), 4)
    for b in batches:
        assert b["inputs"].shape[1] in (16, 32, 64)
        assert (b["segment_ids"].max(axis=1) == 1).all()


def test_eval_batches_cover_every_example_once_in_order(tmp_path):
    pairs, _ = _pairs(tmp_path)
    batches = eval_batches(pairs, seq_len=64, global_batch=4)
    assert len(batches) == 2 and batches.count == len(pairs)
    weights = np.concatenate([b["weights"].sum(1) for b in batches])
    assert weights[:len(pairs)].tolist() == [pairs.target_len(i) for i in range(len(pairs))]
    assert weights[len(pairs):].sum() == 0
    assert len(eval_batches(pairs, seq_len=64, global_batch=4, max_batches=1)) == 1


def test_overlong_records_error_with_count_or_truncate_left_or_skip(tmp_path):
    with pytest.raises(DataError) as e:
        _pairs(tmp_path, seq_len=28)
    msg = str(e.value)
    assert "records do not fit data.seq_len=28" in msg and "truncate_left" in msg
    assert "skip" in msg and "train.jsonl:" in msg
    n_long = int(msg.split(": ")[1].split(" of ")[0])
    assert 0 < n_long < len(RECORDS)
    cut, tok = _pairs(tmp_path, seq_len=28, overlong="truncate_left")
    assert len(cut) == len(RECORDS) and max(len(x) for x in cut.ids) <= 29
    for i, r in enumerate(RECORDS):  # the target is never cut; the prompt loses its start
        assert tok.decode(cut.ids[i][cut.prompt_lens[i]:-1].tolist()) == " " + r["a"]
        assert f"Q: {r['q']}\nA:".endswith(tok.decode(cut.prompt_ids(i)))
    skipped, _ = _pairs(tmp_path, seq_len=28, overlong="skip")
    assert len(skipped) == len(RECORDS) - n_long


def test_records_without_a_named_field_or_with_an_empty_target(tmp_path):
    tok = _tok(["abcdefghijklmnopqrstuvwxyz"])
    bad = RECORDS[:3] + [{"q": "where is the answer?"}, {"q": "empty", "a": "  "}]
    src = _source(tmp_path, bad)
    with pytest.raises(DataError) as e:
        encode_pairs(src, tok, TEMPLATES, seq_len=64)
    msg = str(e.value)
    assert "1 of 5 records lack the field 'a'" in msg and "train.jsonl:4" in msg
    assert "1 of 5 records have an empty target" in msg and "train.jsonl:5" in msg
    assert "data.on_invalid: report" in msg
    kept = encode_pairs(src, tok, TEMPLATES, seq_len=64, on_invalid="report")
    assert kept.targets == [" four", " blue", " Paris"]
    with pytest.raises(DataError, match="lack the field 'question'"):
        encode_pairs(src, tok, Templates("{question}", "{a}"), seq_len=64)


def test_labeled_tsv_and_holdout_records(tmp_path, data_dir):
    trec = open_records(parse_spec(f"labeled:{data_dir}/trec?encoding=iso-8859-1"), "train")
    assert trec.fields() == ["label", "text"] and len(trec) == 5452
    train, val = holdout_records(trec, 0.1)
    assert len(train) + len(val) == 5452 and val[0] == trec[len(train)]
    assert val.where(0) == trec.where(len(train))
    (tmp_path / "d.tsv").write_text("word\tmeaning\ncat\ta small feline\ndog\t\n")
    tsv = open_records(parse_spec(f"tsv:{tmp_path / 'd.tsv'}"), "train")
    assert tsv[0] == {"word": "cat", "meaning": "a small feline"} and tsv.where(1).endswith(":3")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_wraps_prompt_and_target_as_turns(tmp_path):
    t = Templates("{q}", "{a}", CHATML)
    prompt, target = t.texts(RECORDS[0], {})
    assert prompt == ("<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert target == "four<|im_end|>\n"  # the end-of-turn marker is learned as part of it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    assert find_chat_template(tmp_path) == CHATML
    with pytest.raises(DataError, match="chat_template: none"):
        render_chat("{{ raise_exception('no system role') }}", [], {}, True)
    with pytest.raises(DataError):  # the sandbox refuses Python internals
        render_chat("{{ messages.__class__.__mro__ }}", [], {}, True)
