"""TFDS: local files built into a real TFDS dataset and read by name in a fresh process; a standard
TFDS name through tfds.testing.mock_data; pretraining from a tfds: spec, resumed exactly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args, env_extra=None, **kw):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           **(env_extra or {})}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          **kw)


@pytest.fixture(scope="module")
def sst2_tfds(tmp_path_factory, data_dir) -> Path:
    """`jaxlm data build` of ../shared/data/sst2 into a temporary data_dir."""
    out = tmp_path_factory.mktemp("tfds")
    r = run([sys.executable, "-m", "jaxlm.cli", "data", "build", "local_sst2",
             "--train", f"{data_dir}/sst2/train.txt", "--validation", f"{data_dir}/sst2/dev.txt",
             "--test", f"{data_dir}/sst2/test.txt", "--data-dir", str(out), "--format", "labeled"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "built tfds:local_sst2" in r.stdout and "train 6,920 · validation 872 · test 1,821" \
        in r.stdout
    return out


READ_BACK = r"""
import json, sys
import tensorflow_datasets as tfds
from jaxlm.data.sources import open_source
out = {}
for split in ("train", "validation", "test"):
    src = open_source(f"tfds:local_sst2:{split}")  # data_dir from TFDS_DATA_DIR
    out[split] = {"n": len(src), "labels": src.label_names,
                  "first": src[0], "last": src[len(src) - 1]}
raw = tfds.data_source("local_sst2", split="validation", data_dir=sys.argv[1])  # plain TFDS too
out["raw"] = [len(raw), raw[0]["text"].decode(), int(raw[0]["label"])]
out["builder"] = type(tfds.builder("local_sst2", data_dir=sys.argv[1])).__name__
print(json.dumps(out))
"""


def test_built_sst2_is_read_by_name_in_a_fresh_process(sst2_tfds, data_dir):
    r = run([sys.executable, "-c", READ_BACK, str(sst2_tfds)],
            env_extra={"TFDS_DATA_DIR": str(sst2_tfds)})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    files = {"train": "train.txt", "validation": "dev.txt", "test": "test.txt"}
    for split, n in (("train", 6920), ("validation", 872), ("test", 1821)):
        lines = (data_dir / "sst2" / files[split]).read_text().splitlines()
        assert got[split]["n"] == n == len(lines)
        assert got[split]["labels"] == ["0", "1"]
        for key, line in (("first", lines[0]), ("last", lines[-1])):  # file order is kept
            assert got[split][key] == {"text": line[2:], "label": int(line[0])}
    assert got["raw"][0] == 872 and got["raw"][1] == got["validation"]["first"]["text"]
    assert got["builder"] == "ReadOnlyBuilder"  # found from the files: no code import needed


def test_data_show_on_built_dataset(sst2_tfds):
    r = run([sys.executable, "-m", "jaxlm.cli", "data", "show", "tfds:local_sst2", "--n", "2",
             "--tfds-data-dir", str(sst2_tfds)])
    assert r.returncode == 0, r.stderr
    assert "splits: train 6,920 · validation 872 · test 1,821" in r.stdout
    assert "labels (2, counts in train): 0 (3,310), 1 (3,610)" in r.stdout
    assert "[1] label 0: 'apparently reassembled from the cutting-room floor" in r.stdout


def test_build_refuses_standard_names_and_existing_builds(sst2_tfds, data_dir):
    from jaxlm.data.tfds_build import build_dataset
    from jaxlm.errors import DataError

    with pytest.raises(DataError, match="standard TFDS dataset"):
        build_dataset("imdb_reviews", {"train": f"{data_dir}/sst2/dev.txt"}, sst2_tfds)
    with pytest.raises(DataError, match="already exists"):
        build_dataset("local_sst2", {"train": f"{data_dir}/sst2/dev.txt"}, sst2_tfds)


def test_standard_tfds_name_through_mock_data():
    import tensorflow_datasets as tfds

    from jaxlm.data.classification import classification_dataset
    from jaxlm.data.sources import open_source
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer

    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        assert len(open_source("tfds:imdb_reviews:test")) == 40
        src = open_source("tfds:imdb_reviews:train")
        assert len(src) == 40 and src.label_names == ["neg", "pos"]
        ex = src[3]
        assert isinstance(ex["text"], str) and ex["label"] in (0, 1)
        tok = TextTokenizer(train_tokenizer(src.texts(), "char"))
        it = iter(classification_dataset(src, tok, seq_len=32, global_batch=8, num_steps=4,
                                         seed=0))
        b = next(it)
        assert b["inputs"].shape[0] == 8 and set(b["labels"]) <= {0, 1}


def test_missing_tfds_dataset_error(tmp_path):
    from jaxlm.data.sources import open_source
    from jaxlm.errors import DataError

    with pytest.raises(DataError, match="was not found") as e:
        open_source(f"tfds:no_such_dataset?data_dir={tmp_path}")
    assert str(tmp_path) in str(e.value) and "jaxlm data build" in str(e.value)


def _scenes_config(tmp_path, data_dir):
    """Tiny Shakespeare scenes (blank-line blocks) built as a TFDS text dataset, and a packed
    masked-LM pretraining config that reads it by name."""
    from jaxlm.config import config_from_dict
    from jaxlm.data.sources import SourceOptions
    from jaxlm.data.tfds_build import build_dataset

    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:60_000]
    (tmp_path / "train.txt").write_text(text[:50_000])
    (tmp_path / "dev.txt").write_text(text[50_000:])
    sizes = build_dataset("scenes", {"train": str(tmp_path / "train.txt"),
                                     "validation": str(tmp_path / "dev.txt")},
                          tmp_path / "tfds", fmt="text",
                          options=SourceOptions(documents="blank_line"))
    assert sizes["train"] > 200 and sizes["validation"] > 20
    return config_from_dict({
        "model": {"family": "bert", "num_layers": 2, "d_model": 32, "num_heads": 2,
                  "max_len": 64},
        "data": {"train": "tfds:scenes", "tfds_data_dir": str(tmp_path / "tfds"), "seq_len": 64,
                 "sampling": "packed", "packing": "first_fit"},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "mesh": {"num_devices": 1},
        "train": {"task": "masked", "steps": 8, "batch_size": 4, "eval_every": 4,
                  "log_every": 2, "checkpoint_every": 3, "eval_batches": 2},
    })


def test_masked_pretraining_from_tfds_spec(tmp_path, data_dir):
    from jaxlm.train.pretrain import pretrain

    cfg = _scenes_config(tmp_path, data_dir)
    out = pretrain(cfg, str(tmp_path / "run"), show_progress=False, peak_flops=1e12)
    assert out["step"] == 8 and np.isfinite(out["val"]["loss"])
    assert out["val"]["loss"] < np.log(out["vocab_size"])  # better than uniform over the vocab
    assert (tmp_path / "run" / "tokenizer.json").is_file()


@pytest.mark.slow  # the iterator-level resume tests in test_data_pipelines cover this fast
def test_masked_pretraining_from_tfds_spec_resumes_exactly(tmp_path, data_dir):
    """A run stopped after its first checkpoint and resumed ends exactly where an uninterrupted
    one does: packed masked-LM data from a tfds: spec, position saved in the checkpoint."""
    from jaxlm.train.pretrain import pretrain
    from jaxlm.train.trainer import stop_at

    cfg = _scenes_config(tmp_path, data_dir)
    full = pretrain(cfg, str(tmp_path / "full"), show_progress=False, peak_flops=1e12)
    pretrain(cfg, str(tmp_path / "resumed"), show_progress=False, hooks=[stop_at(4)], peak_flops=1e12)
    resumed = pretrain(cfg, str(tmp_path / "resumed"), show_progress=False, peak_flops=1e12)
    assert resumed["resumed_from"] == 3 and resumed["step"] == 8
    assert resumed["train"]["loss"] == full["train"]["loss"]
    assert resumed["val"]["loss"] == full["val"]["loss"]
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                        full["state"].params, resumed["state"].params))
    assert all(same)


def test_tfds_examples_as_records_for_generative_fine_tuning(sst2_tfds, data_dir, monkeypatch):
    from jaxlm.data.records import open_records
    from jaxlm.data.sources import parse_spec

    monkeypatch.setenv("TFDS_DATA_DIR", str(sst2_tfds))
    records = open_records(parse_spec("tfds:local_sst2"), "validation")
    first = (data_dir / "sst2" / "dev.txt").read_text().splitlines()[0].split(maxsplit=1)
    assert len(records) == 872 and sorted(records.fields()) == ["label", "text"]
    assert records[0] == {"label": first[0], "text": first[1]}  # a ClassLabel as its name
    assert records.where(3) == "tfds:local_sst2 [validation] #3"
