"""Dataset specs and local files: formats, splits, encodings, and invalid records never dropped
silently."""
import json

import pytest

from jaxlm.data.sources import available_splits, open_source, parse_spec
from jaxlm.errors import DataError


def test_spec_parsing():
    s = parse_spec("tfds:glue/sst2:validation")
    assert (s.kind, s.target, s.split) == ("tfds", "glue/sst2", "validation")
    s = parse_spec("tfds:imdb_reviews:1.0.0:train[:10%]")
    assert (s.target, s.split) == ("imdb_reviews:1.0.0", "train[:10%]")
    s = parse_spec("tfds:lm1b?data_dir=/x&on_invalid=error")
    assert (s.target, s.split, s.options.data_dir, s.options.on_invalid) == (
        "lm1b", None, "/x", "error")
    assert parse_spec("some/file.txt").kind == "text"
    with pytest.raises(DataError, match="Unknown dataset kind 'foo'"):
        parse_spec("foo:bar")
    with pytest.raises(DataError, match="Unknown option 'encodng'"):
        parse_spec("labeled:x.txt?encodng=latin-1")


def test_sst2_directory_splits_and_labels(data_dir):
    spec = f"labeled:{data_dir}/sst2"
    assert list(available_splits(spec)) == ["train", "validation", "test"]
    sizes = {s: len(open_source(spec, s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 6920, "validation": 872, "test": 1821}
    dev = open_source(f"{spec}:validation")
    assert dev.label_names == ["0", "1"]
    first = (data_dir / "sst2" / "dev.txt").read_text().splitlines()[0]
    assert dev[0] == {"text": first[2:], "label": int(first[0])}


def test_sst5_labels_sorted_numerically_and_shared_with_dev_file(data_dir):
    train = open_source(f"labeled:{data_dir}/sst5/train.txt")
    assert train.label_names == ["0", "1", "2", "3", "4"]
    dev = open_source(f"labeled:{data_dir}/sst5/dev.txt", "validation",
                      label_names=train.label_names)
    assert len(dev) == 1101 and set(dev[i]["label"] for i in range(len(dev))) == set(range(5))


def test_non_utf8_file_error_names_file_line_byte_and_fix(data_dir):
    with pytest.raises(DataError) as e:
        open_source(f"labeled:{data_dir}/trec")
    msg = str(e.value)
    assert "trec/train.txt" in msg and "line 66" in msg and "byte 0xf0" in msg
    assert "offset 3173" in msg and "encoding" in msg and "iso-8859-1" in msg
    trec = open_source(f"labeled:{data_dir}/trec?encoding=iso-8859-1")
    assert len(trec) == 5452 and len(trec.label_names) == 6
    assert trec[65]["text"].startswith("Which city has the oldest relationship as a sister\u00f0")
    # ISO-8859-1 text holds bytes (0x85) that str.splitlines would treat as line breaks
    assert len(open_source(f"labeled:{data_dir}/trec:test?encoding=iso-8859-1")) == 500


def test_invalid_records_are_counted_or_errors(tmp_path, capsys):
    f = tmp_path / "train.txt"
    f.write_text("pos good film\n\nneg bad film\nneutral meh\npos\nneg awful\n")
    src = open_source(f"labeled:{f}?labels=pos,neg")
    assert len(src) == 3 and src.label_names == ["pos", "neg"]
    assert [src[i]["label"] for i in range(3)] == [0, 1, 1]
    counts = dict(src.report.counts)
    assert counts == {"empty line": 1, "label 'neutral' outside the declared label set": 1,
                      "label without text": 1}
    assert f"{f}:2" in src.report.where["empty line"]
    err = capsys.readouterr().err
    assert "skipped 3 record(s)" in err and f"{f}:4" in err  # reported, not silent
    with pytest.raises(DataError, match=rf"{f}:2: empty line"):
        open_source(f"labeled:{f}?labels=pos,neg&on_invalid=error")
    # without a declared set, the train split defines the labels
    assert open_source(f"labeled:{f}").label_names == ["neg", "neutral", "pos"]


def test_tsv_csv_jsonl_with_named_fields(tmp_path):
    (tmp_path / "a.tsv").write_text("id\tsentence\tclass\n1\tgreat movie\tpos\n2\t\tneg\n"
                                    "3\tdull\tneg\n4\tok\t\n")
    src = open_source(f"tsv:{tmp_path}/a.tsv?text_field=sentence&label_field=class")
    assert len(src) == 2 and src.label_names == ["neg", "pos"]
    assert src[0] == {"text": "great movie", "label": 1}
    assert src.report.counts == {"empty text": 1, "missing label": 1}
    (tmp_path / "b.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    src = open_source(f"csv:{tmp_path}/b.csv")
    assert src[0] == {"text": "hello, world", "label": 1}
    lines = [{"body": "one", "y": "a"}, {"body": "two"}, {"body": "three", "y": "b"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    src = open_source(f"jsonl:{tmp_path}/c.jsonl?text_field=body&label_field=y")
    assert len(src) == 2 and src.report.counts == {"missing label": 1}
    with pytest.raises(DataError, match="has no text field 'txt'"):
        open_source(f"jsonl:{tmp_path}/c.jsonl?text_field=txt")


def test_plain_text_document_modes(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a b\nc\n\n\nd e\n\nf\n")
    assert [open_source(f"text:{f}")[0]["text"]] == ["a b\nc\n\n\nd e\n\nf\n"]
    blocks = open_source(f"text:{f}?documents=blank_line")
    assert [blocks[i]["text"] for i in range(len(blocks))] == ["a b\nc", "d e", "f"]
    lines = open_source(f"text:{f}?documents=line")
    assert len(lines) == 4 and lines.report.counts == {"empty line": 3}
    assert lines.label_names is None and lines[0]["label"] == -1


def test_missing_split_and_file_errors(tmp_path, data_dir):
    with pytest.raises(DataError, match="No 'validation' split"):
        open_source(f"labeled:{data_dir}/trec:validation?encoding=iso-8859-1")
    with pytest.raises(DataError, match="does not exist"):
        open_source(f"labeled:{tmp_path}/nope.txt")
