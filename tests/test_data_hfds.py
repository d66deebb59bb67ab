"""`hfds:` specs (Hugging Face datasets), offline: pretraining from a local Parquet file,
classification from a save_to_disk folder, generative records, exact resume after kill -9 through
the source, the same records as the jsonl:/labeled: sources, and one-paragraph errors."""
import os

# before `datasets` is imported (it reads these once): no test may reach, or wait for, the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

datasets = pytest.importorskip("datasets")

import test_reliability_kill as kill  # noqa: E402
from cli_utils import run_cli  # noqa: E402
from jaxlm.data.records import open_records  # noqa: E402
from jaxlm.data.sources import available_splits, open_source, parse_spec  # noqa: E402
from test_reliability_kill import jit_cache  # noqa: E402,F401  (the shared compile cache)

LM = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
      "data": {"seq_len": 32, "tokenizer": {"kind": "char"}}, "mesh": {"num_devices": 1},
      "train": {"steps": 4, "batch_size": 4, "eval_every": 4, "eval_batches": 1,
                "log_every": 2, "checkpoint_every": 4}}
CLF = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 64},
       "data": {"seq_len": 32, "tokenizer": {"kind": "wordpiece", "vocab_size": 200}},
       "mesh": {"num_devices": 1},
       "train": {"task": "classification", "steps": 2, "batch_size": 8, "eval_every": 2,
                 "log_every": 1, "checkpoint_every": 2}}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """Offline, with a private datasets cache (even when `datasets` was imported earlier)."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(_cache(tmp_path_factory)))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", _cache(tmp_path_factory))


def _cache(factory) -> Path:
    path = factory.getbasetemp() / "hf_datasets_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Tiny Shakespeare's first 60k characters as documents (blank-line blocks) in a Parquet file
    and, the same documents, in a JSONL file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("shakespeare")
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:60_000]
    docs = [d.strip("\n") for d in text.split("\n\n") if d.strip()]
    assert len(docs) > 100
    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), root / "docs.parquet")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d, "n": i}) + "\n"
                                             for i, d in enumerate(docs)))
    return {"parquet": root / "docs.parquet", "jsonl": root / "docs.jsonl"}


@pytest.fixture(scope="module")
def sst(tmp_path_factory, data_dir) -> dict[str, Path]:
    """300/100/100 SST-2 rows: a save_to_disk DatasetDict (ClassLabel label feature) and the same
    rows as a labeled: folder."""
    root = tmp_path_factory.mktemp("sst")
    (root / "labeled").mkdir()
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["0", "1"])})
    parts = {}
    for split, name, n in (("train", "train.txt", 300), ("validation", "dev.txt", 100),
                           ("test", "test.txt", 100)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (root / "labeled" / name).write_text("\n".join(lines) + "\n")
        rows = [line.split(" ", 1) for line in lines]
        parts[split] = datasets.Dataset.from_dict(
            {"sentence": [t for _, t in rows], "label": [int(y) for y, _ in rows]}, features=feats)
    datasets.DatasetDict(parts).save_to_disk(str(root / "saved"))
    return {"saved": root / "saved", "labeled": root / "labeled"}


def _config(tmp_path: Path, base: dict, train: str, **data) -> Path:
    cfg = json.loads(json.dumps(base))
    cfg["data"].update(train=train, **data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _message(err: str) -> str:
    assert "Traceback" not in err, err
    return err[err.find("error:"):]


# --- 1. every task, offline ---------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["packed", "random_windows"])
def test_pretrain_from_a_local_parquet_file(tmp_path, shakespeare, sampling):
    cfg = _config(tmp_path, LM, f"hfds:{shakespeare['parquet']}", sampling=sampling)
    code, err = run_cli(["pretrain", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 4 and np.isfinite(summary["val"]["loss"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4]


def test_finetune_classification_from_a_save_to_disk_folder(tmp_path, sst):
    cfg = _config(tmp_path, CLF, f"hfds:{sst['saved']}")
    run = tmp_path / "run"
    code, err = run_cli(["finetune", "--config", str(cfg), "--run", str(run), "--quiet"])
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    # validation and test came from the folder's own splits, the classes from the ClassLabel
    assert summary["classes"] == ["0", "1"]
    for split, name in (("validation", "dev.txt"), ("test", "test.txt")):
        labels = [x.split(" ", 1)[0] for x in (sst["labeled"] / name).read_text().splitlines()]
        report = summary[split]
        assert report["n"] == 100 and 0.0 <= report["accuracy"] <= 1.0
        assert {c: report["per_class"][c]["support"] for c in "01"} == {
            c: labels.count(c) for c in "01"}


def test_generative_finetune_reads_hfds_records(tmp_path):
    words = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "theta"] * 8
    datasets.Dataset.from_dict({"input": words, "output": [w[::-1] for w in words]}).to_parquet(
        str(tmp_path / "pairs.parquet"))
    base = {**LM, "train": {**LM["train"], "task": "generative", "eval_every": 0},
            "generative": {"prompt_template": "{input}\n", "target_template": "{output}",
                           "max_new_tokens": 4}}
    cfg = _config(tmp_path, base, f"hfds:{tmp_path / 'pairs.parquet'}")
    code, err = run_cli(["finetune", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 4


def test_streamed_source_trains_the_same_tokenizer(tmp_path, shakespeare):
    """?streaming=true reads in order: train-tokenizer learns exactly what the memory-mapped
    source teaches it."""
    outs = []
    for name, spec in (("mapped", f"hfds:{shakespeare['parquet']}"),
                       ("streamed", f"hfds:{shakespeare['parquet']}?streaming=true")):
        code, err = run_cli(["train-tokenizer", "--data", spec, "--kind", "bpe",
                             "--vocab-size", "300", "--out", str(tmp_path / name), "--quiet"])
        assert code == 0, err
        outs.append((tmp_path / name / "tokenizer.json").read_text())
    assert outs[0] == outs[1]


# --- 2. exact resume after kill -9, reading documents by index from the hfds source -------------
def test_sigkill_mid_save_then_resume_equals_uninterrupted(tmp_path, shakespeare, jit_cache,
                                                          monkeypatch):
    steps = 60
    monkeypatch.setattr(kill, "STEPS", steps)  # the step whose checkpoint _final_state reads
    # the processes run a frozen copy of the package (kill.Run starts them in kill.REPO, and
    # kill._sources watches it): others editing this shared checkout cannot make the runs differ
    snapshot = tmp_path / "snapshot"
    shutil.copytree(kill.REPO / "jaxlm", snapshot / "jaxlm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(kill, "REPO", snapshot)
    sources = kill._sources()
    cfg = yaml.safe_load(kill._config(tmp_path, shakespeare["parquet"]).read_text())
    cfg["data"].update(train=f"hfds:{shakespeare['parquet']}", sampling="packed")
    cfg["train"]["steps"] = steps
    path = tmp_path / "hfds_kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = kill.Run(path, tmp_path / "reference", jit_cache)
    run = kill.Run(path, tmp_path / "interrupted", jit_cache)
    ref.start()
    assert any(run.kill_mid_save() for _ in range(3)), "no kill landed inside a save"
    run.start()
    rc, err = run.finish()
    assert rc == 0 and "Traceback" not in err, err
    assert "unfinished checkpoint" in err  # it did resume from the torn run
    assert ref.finish()[0] == 0
    kill._assert_same_final_state(ref, run, sources)


def test_packed_batches_shard_and_resume_as_the_jsonl_source(shakespeare):
    """The grain pipeline over the hfds source: per-host shards and a resumed iterator equal the
    jsonl source's batch for batch (the iterator state is an index, as for every source)."""
    from jaxlm.data.iterators import take
    from jaxlm.data.packing import DocEncoder, packed_train_dataset
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer

    hf = open_source(f"hfds:{shakespeare['parquet']}")
    js = open_source(f"jsonl:{shakespeare['jsonl']}")
    tok = TextTokenizer(train_tokenizer(js.texts(), "char"))
    kw = dict(seq_len=32, global_batch=4, seed=3)
    shards = []
    for host in (0, 1):
        a, b = (take(iter(packed_train_dataset(s, DocEncoder(tok), process_index=host,
                                               process_count=2, **kw)), 6) for s in (hf, js))
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)
        shards.append(a)
    assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(*shards))  # distinct shards
    it = iter(packed_train_dataset(hf, DocEncoder(tok), **kw))
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    ahead = take(it, 3)
    resumed = iter(packed_train_dataset(hf, DocEncoder(tok), **kw))
    resumed.set_state(state)
    for x, y in zip(take(resumed, 3), ahead):
        assert all((x[k] == y[k]).all() for k in x)


# --- 4. the same records as the existing sources ------------------------------------------------
def test_texts_match_the_jsonl_source(shakespeare):
    hf = open_source(f"hfds:{shakespeare['parquet']}")
    js = open_source(f"jsonl:{shakespeare['jsonl']}")
    assert len(hf) == len(js) > 100 and hf.label_names is None
    assert [hf[i] for i in range(len(hf))] == [js[i] for i in range(len(js))]
    assert list(hf.texts()) == list(js.texts())
    a = open_records(parse_spec(f"hfds:{shakespeare['parquet']}"), "train")
    b = open_records(parse_spec(f"jsonl:{shakespeare['jsonl']}"), "train")
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]


def test_labels_match_the_labeled_source(sst):
    spec = f"hfds:{sst['saved']}"
    assert available_splits(spec) == {"train": 300, "validation": 100, "test": 100}
    for split in ("train", "validation", "test"):
        hf = open_source(spec, split)
        lab = open_source(f"labeled:{sst['labeled']}", split)
        assert hf.label_names == lab.label_names == ["0", "1"]
        assert [hf[i] for i in range(len(hf))] == [lab[i] for i in range(len(lab))]
    recs = open_records(parse_spec(spec), "validation")
    lab = open_records(parse_spec(f"labeled:{sst['labeled']}"), "validation")
    assert [{"label": recs[i]["label"], "text": recs[i]["sentence"]} for i in range(len(recs))] \
        == [lab[i] for i in range(len(lab))]


def test_plain_label_columns_map_like_local_files(tmp_path):
    """A label column that is not a ClassLabel: sorted values (numeric order), the train split's
    set for the other splits, as for jsonl: files."""
    d = tmp_path / "d"
    d.mkdir()
    rows = {"train": [("a", 10), ("b", 9), ("c", 10)], "validation": [("d", 9)]}
    for split, rs in rows.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                                  for t, y in rs))
        datasets.Dataset.from_dict({"text": [t for t, _ in rs], "label": [y for _, y in rs]}
                                   ).to_parquet(str(d / f"{split}.parquet"))
    for split in rows:
        hf = open_source(f"hfds:{d}", split)
        js = open_source(f"jsonl:{d}", split)
        assert hf.label_names == js.label_names == ["9", "10"]
        assert [hf[i] for i in range(len(hf))] == [js[i] for i in range(len(js))]


# --- 3. errors: one paragraph, exit 2, the culprit named ----------------------------------------
ERRORS = [
    ("missing path", "hfds:{tmp}/missing.parquet", ["missing.parquet", "does not exist"]),
    ("unknown split", "hfds:{parquet}:validatoin", ["no split 'validatoin'", "it has train"]),
    ("missing field", "hfds:{parquet}?text_field=body",
     ["no text field 'body'", "its fields are text, n", "data.text_field"]),
    ("hub id offline", "hfds:someone/not-cached-anywhere",
     ["someone/not-cached-anywhere", "HF_DATASETS_OFFLINE", "save_to_disk", "Parquet"]),
    ("not an id", "hfds:bad id!", ["'bad id!'", "neither an existing local path"]),
    ("streamed", "hfds:{parquet}?streaming=true", ["is streamed", "Drop ?streaming=true"]),
    ("bad option", "hfds:{parquet}?streem=true", ["Unknown option 'streem'", "streaming"]),
    ("corrupt file", "hfds:{tmp}/bad.parquet", ["Could not read", "bad.parquet", "valid Parquet"]),
    ("no data files", "hfds:{tmp}/empty", ["holds no data files", "train.parquet"]),
]


@pytest.mark.parametrize("spec,expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_hfds_specs_are_one_paragraph_errors(tmp_path, shakespeare, spec, expected):
    spec = spec.format(tmp=tmp_path, parquet=shakespeare["parquet"])
    (tmp_path / "bad.parquet").write_text("not parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no data here")
    cfg = _config(tmp_path, LM, spec)
    code, err = run_cli(["pretrain", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    msg = _message(err)
    assert code == 2, err
    for piece in expected:
        assert piece in msg, (piece, msg)
    assert len(msg.strip().splitlines()) == 1, msg


def test_labels_outside_the_declared_set_are_named(tmp_path, shakespeare):
    cfg = _config(tmp_path, CLF, f"hfds:{shakespeare['parquet']}?label_field=n&labels=0,1")
    code, err = run_cli(["finetune", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    msg = _message(err)
    assert code == 2 and "label column 'n'" in msg and "data.labels" in msg, err


def test_without_the_datasets_package_the_error_says_how_to_install(tmp_path, shakespeare,
                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    cfg = _config(tmp_path, LM, f"hfds:{shakespeare['parquet']}")
    code, err = run_cli(["pretrain", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    msg = _message(err)
    assert code == 2 and "pip install 'jaxlm[datasets]'" in msg and "hfds:" in msg, err


HUB_FAILURES = [
    ("unknown dataset", "DatasetNotFoundError",
     "Dataset 'someone/nothing' doesn't exist on the Hub",
     ["No Hugging Face dataset 'someone/nothing'", "Check the Hub id"]),
    ("no network", "ConnectionError", "Couldn't reach 'someone/nothing' on the Hub",
     ["Cannot reach the Hugging Face Hub", "save_to_disk", "Parquet"]),
    ("unknown config", "ValueError", "BuilderConfig 'nope' not found. Available: ['a', 'b']",
     ["has no config 'nope'", "Available: ['a', 'b']"]),
]


@pytest.mark.parametrize("error,text,expected", [h[1:] for h in HUB_FAILURES],
                         ids=[h[0] for h in HUB_FAILURES])
def test_hub_failures_online_are_one_paragraph_errors(tmp_path, monkeypatch, error, text,
                                                      expected):
    """What load_dataset raises online (stubbed: no test touches the network)."""
    import datasets.exceptions

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    exc = getattr(datasets.exceptions, error, None) or {"ConnectionError": ConnectionError,
                                                        "ValueError": ValueError}[error]

    def load_dataset(*args, **kwargs):
        raise exc(text)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = "hfds:someone/nothing/nope" if error == "ValueError" else "hfds:someone/nothing"
    code, err = run_cli(["pretrain", "--config", str(_config(tmp_path, LM, spec)), "--run",
                         str(tmp_path / "run"), "--quiet"])
    msg = _message(err)
    assert code == 2, err
    for piece in expected:
        assert piece in msg, (piece, msg)
    assert len(msg.strip().splitlines()) == 1, msg


def test_splits_with_different_class_labels_are_refused(tmp_path):
    names = {"train": ["neg", "pos"], "validation": ["pos", "neg"]}
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]},
                                          features=datasets.Features({
                                              "text": datasets.Value("string"),
                                              "label": datasets.ClassLabel(names=n)}))
        for split, n in names.items()}).save_to_disk(str(tmp_path / "saved"))
    cfg = _config(tmp_path, CLF, f"hfds:{tmp_path / 'saved'}")
    code, err = run_cli(["finetune", "--config", str(cfg), "--run", str(tmp_path / "run"),
                         "--quiet"])
    msg = _message(err)
    assert code == 2 and "class labels" in msg and "pos, neg" in msg, err


def test_a_hub_spec_names_repo_config_split_and_revision(monkeypatch):
    """hfds:OWNER/NAME/CONFIG:SPLIT?revision=R reaches load_dataset as such (stubbed)."""
    calls = []
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [1, 0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"text": ["e"], "label": [0]})})

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return data

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    src = open_source("hfds:nyu-mll/glue/sst2:train[1:3]?revision=abc123")
    assert calls[0] == (("nyu-mll/glue", "sst2"), {"streaming": False, "revision": "abc123"})
    assert [src[i] for i in range(len(src))] == [{"text": "b", "label": 0},
                                                 {"text": "c", "label": 1}]
    assert available_splits("hfds:someone/imdb") == {"train": 4, "test": 1}
    assert calls[-1][0] == ("someone/imdb", None)


def test_data_show_lists_splits_and_class_names(sst):
    import io
    from contextlib import redirect_stdout

    from jaxlm.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["data", "show", f"hfds:{sst['saved']}", "--n", "2"]) == 0
    text = out.getvalue()
    assert "splits: train 300 · validation 100 · test 100" in text
    assert "labels (2, counts in train): 0 (" in text and "[1] label 0:" in text


def test_data_show_reads_the_first_examples_of_a_stream(shakespeare):
    import io
    from contextlib import redirect_stdout

    from jaxlm.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["data", "show", f"hfds:{shakespeare['parquet']}?streaming=true",
                     "--n", "2"]) == 0
    text = out.getvalue()
    assert "splits: train\n" in text and "first 2 examples of train:" in text
    assert "[0]: 'First Citizen:" in text and "[1]: " in text and "[2]: " not in text
