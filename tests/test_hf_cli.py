"""`jaxlm convert` and `jaxlm export`: run directories from Hugging Face checkpoints and back, and
exports of a real pretraining run, checked against transformers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_utils import TOL, max_diff, padded_batch, save_tiny, tiny_tokenizer, torch_forward  # noqa: E402

from jaxlm.cli import main  # noqa: E402
from jaxlm.interop.hf import import_hf  # noqa: E402
from jaxlm.params import apply_params, to_flat  # noqa: E402
from jaxlm.loading import load_params  # noqa: E402
from jaxlm.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = tiny_tokenizer(root / "tok")
    out = {}
    for kind in ("gpt2", "bert"):
        shutil.copytree(root / "tok", root / kind)
        out[kind] = (root / kind, save_tiny(kind, root / kind, vocab_size=tok.vocab_size))
    return out, tok


def jax_outputs(path, ids, mask):
    """Logits of the model `load_params(path)` describes, built with exactly its parameters."""
    cfg, params, _, info = load_params(path)
    kw = {}
    if info["task"] == "classification":
        kw = {"num_labels": info["num_labels"], "pooler": info["pooler"],
              "pooling": info["pooling"]}
    model = build_model(cfg, info["task"], **kw)
    fresh, unused = apply_params(model, params)
    assert not fresh and not unused
    return np.asarray(model(ids, segment_ids_BxT=mask)), info


def test_convert_then_export_gpt2(tiny, tmp_path, capsys):
    (src, ref), tok = tiny[0]["gpt2"], tiny[1]
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["convert", "--from-hf", str(src), "--out", str(run)]) == 0
    assert "for 'causal': " in capsys.readouterr().out
    assert {"config.yaml", "tokenizer.json", "checkpoints", "hf_import.json"} <= {
        p.name for p in run.iterdir()}
    cfg_yaml = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg_yaml["model"]["family"] == "gpt2" and cfg_yaml["train"]["task"] == "causal"
    # the run directory holds exactly the imported parameters
    a, b = to_flat(import_hf(src)[1]), to_flat(load_params(run)[1])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert "as GPT2LMHeadModel" in capsys.readouterr().out
    back = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    ids, mask = padded_batch(tok)
    logits, _ = jax_outputs(run, ids, mask)
    d = (max_diff(logits, torch_forward(ref, ids, mask)[1], mask),
         max_diff(logits, torch_forward(back, ids, mask)[1], mask))
    print(f"convert/export gpt2 max abs diff: vs original {d[0]:.2e}, vs exported {d[1]:.2e}")
    assert max(d) <= TOL


def test_convert_bert_for_classification_then_export(tiny, tmp_path, capsys):
    (src, _), tok = tiny[0]["bert"], tiny[1]
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["convert", "--from-hf", f"hf:{src}", "--out", str(run), "--task",
                 "classification", "--num-labels", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "initialised fresh (not in the checkpoint): head.classifier.bias, head.classifier.kernel" in printed
    meta = json.loads((run / "hf_import.json").read_text())
    assert meta["fresh"] == ["head.classifier.bias", "head.classifier.kernel"] and meta["pooler"]
    cfg_yaml = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg_yaml["train"]["task"] == "classification"
    ids, mask = padded_batch(tok, add_special_tokens=True)
    logits, info = jax_outputs(run, ids, mask)
    assert info["num_labels"] == 3 and info["pooling"] == "first" and logits.shape == (4, 3)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    back = transformers.BertForSequenceClassification.from_pretrained(str(out)).eval()
    d = max_diff(logits, torch_forward(back, ids, mask)[1])
    print(f"convert/export bert classifier max abs diff: {d:.2e}")
    assert d <= TOL


def test_convert_and_export_errors(tiny, tmp_path, capsys):
    (src, _) = tiny[0]["bert"]
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "r"), "--task",
                 "causal"]) == 2
    assert "BERT is bidirectional" in capsys.readouterr().err
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "r"), "--task",
                 "classification"]) == 2
    assert "pass --num-labels N" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "busy")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "busy"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a jaxlm run directory" in capsys.readouterr().err


def test_export_of_a_pretraining_run(tiny_corpus, tmp_path):
    """A real `jaxlm pretrain` run (full train state: params + optimizer state) exports as a
    GPT2LMHeadModel with the same logits. Its config (nanoGPT's) has no linear biases: the
    export writes zero biases, which GPT-2 requires and which change nothing."""
    run, out = tmp_path / "run", tmp_path / "hf"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    res = subprocess.run(
        [sys.executable, "-m", "jaxlm.cli", "pretrain", "--config",
         str(REPO / "configs/shakespeare_char.yaml"), "--run", str(run), "--quiet",
         "--set", f"data.train=text:{tiny_corpus}", "--set", "train.steps=3",
         "--set", "train.eval_every=0", "--set", "train.checkpoint_every=3",
         "--set", "model.num_layers=2", "--set", "model.d_model=32"],
        env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    cfg, params, tok, info = load_params(run)
    assert info["checkpoint"] == "step 3" and info["task"] == "causal" and not cfg.use_bias
    back = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    ids, mask = padded_batch(tok, ["First Citizen:", "Speak, speak. All:"])
    logits, _ = jax_outputs(run, ids, mask)
    d = max_diff(logits, torch_forward(back, ids, mask)[1], mask)
    print(f"pretrain-run export max abs diff: {d:.2e}")
    assert d <= TOL


def test_export_of_a_finetuning_run(tiny, data_dir, tmp_path):
    """`jaxlm finetune --init-from hf:DIR` (a BERT with pooler) for a few steps on SST-2, then
    `jaxlm export`: the best checkpoint loads as BertForSequenceClassification and gives the
    logits jaxlm's own inference gives."""
    from jaxlm.run import load_run

    (src, _), tok = tiny[0]["bert"], tiny[1]
    run, out = tmp_path / "run", tmp_path / "hf"
    cfg = {"name": "tiny_ft", "data": {"train": f"labeled:{data_dir}/sst2", "seq_len": 32},
           "optim": {"lr": 1e-3, "schedule": "constant"},
           "train": {"task": "classification", "steps": 4, "batch_size": 8,
                     "eval_every": 2, "eval_batches": 2, "log_every": 2, "checkpoint_every": 4},
           "finetune": {"init_from": f"hf:{src}", "pooling": "first", "pooler": True}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    res = subprocess.run([sys.executable, "-m", "jaxlm.cli", "finetune", "--config",
                          str(tmp_path / "ft.yaml"), "--run", str(run), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["architectures"] == ["BertForSequenceClassification"]
    assert hf_cfg["id2label"] == {"0": "0", "1": "1"}
    loaded = load_run(run)  # the best checkpoint, as `jaxlm evaluate` reads it
    ids, mask = padded_batch(tok, add_special_tokens=True)
    logits = np.asarray(loaded.model(ids, segment_ids_BxT=mask))
    back = transformers.BertForSequenceClassification.from_pretrained(str(out)).eval()
    d = max_diff(logits, torch_forward(back, ids, mask)[1])
    print(f"finetune-run export max abs diff: {d:.2e} ({loaded.checkpoint})")
    assert d <= TOL
