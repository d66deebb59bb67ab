"""LoRA fine-tuning: only adapters and heads train (the base bitwise unchanged, optimizer state
and checkpoints for the trained part only, the base stored once), the unmerged run, its merged
export (jaxlm, transformers) and its PEFT adapters give the same logits, and bad settings are
refused by the CLI naming the key."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from jaxlm.checkpoint import read_params
from jaxlm.cli import main
from jaxlm.config import config_from_dict
from jaxlm.interop.convert import export_run
from jaxlm.loading import load_model
from jaxlm.models.lora import LoRALinear, merge_lora
from jaxlm.run import load_run
from jaxlm.train.finetune import finetune
from jaxlm.train.init_from import load_pretrained
from jaxlm.train.pretrain import pretrain

MODEL = {"family": "bert", "num_layers": 2, "d_model": 32, "num_heads": 2, "max_len": 64}
LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["attention", "mlp"]}


@pytest.fixture(scope="module")
def sst(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("lora_sst")
    src = data_dir / "sst2"
    for name, n in (("train.txt", 200), ("dev.txt", 40), ("test.txt", 40)):
        (root / name).write_text("\n".join((src / name).read_text().splitlines()[:n]) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(l.split(" ", 1)[1] for l in
                                (src / "train.txt").read_text().splitlines()[:800]))
    pre = root / "pre"
    pretrain(config_from_dict({
        "model": MODEL, "mesh": {"num_devices": 1},
        "data": {"train": f"text:{corpus}", "seq_len": 32,
                 "tokenizer": {"kind": "wordpiece", "vocab_size": 300}},
        "train": {"task": "masked", "steps": 1, "batch_size": 8, "eval_every": 0,
                  "checkpoint_every": 1}}), str(pre), show_progress=False)
    return root, pre


def _raw(root: Path, pre: Path) -> dict:
    return {"mesh": {"num_devices": 1}, "data": {"train": f"labeled:{root}", "seq_len": 32},
            "optim": {"lr": 2e-2, "schedule": "constant"},
            "train": {"task": "classification", "steps": 4, "batch_size": 8, "grad_accum": 2,
                      "eval_every": 4, "log_every": 2, "checkpoint_every": 2},
            "finetune": {"init_from": str(pre), "pooler": True, "lora": dict(LORA)}}


@pytest.fixture(scope="module")
def lora_run(sst, tmp_path_factory):
    root, pre = sst
    run = tmp_path_factory.mktemp("lora_ft") / "run"
    summary = finetune(config_from_dict(_raw(root, pre)), str(run), show_progress=False)
    return run, summary


def _flat(tree) -> dict:
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_only_adapters_and_heads_train_and_the_base_is_stored_once(sst, lora_run):
    _, pre = sst
    run, summary = lora_run
    params = _flat(summary["state"].params)
    backbone = _flat(nnx.to_pure_dict(load_pretrained(str(pre)).backbone))
    adapters = {p for p in params if "lora" in p}
    trained = adapters | {p for p in params if p[0] == "head"}
    # every base weight bitwise as pretrained; every adapter B moved off its zero init
    base = {p: v for p, v in params.items() if p[0] == "backbone" and p not in adapters}
    assert len(base) == len(backbone) > 20
    for p, v in base.items():
        assert np.array_equal(v, backbone[p[1:]]), p
    assert all(np.abs(params[p]).max() > 0 for p in adapters if p[-1] == "lora_b")
    assert summary["trainable_params"] == sum(params[p].size for p in trained)
    assert summary["trainable_params"] < summary["params"] / 4
    # optimizer state (AdamW: two moments) for the trained parameters only
    opt = jax.tree.leaves(summary["state"].opt_state)
    assert sum(x.size for x in opt if x.ndim) == 2 * summary["trainable_params"]
    # checkpoints hold the trained part; the frozen base is written once, in base/
    for kind, item, key in (("checkpoints", "state", "params"), ("best", "params", None)):
        step_dir = sorted((run / kind).glob("[0-9]*"))[-1]
        saved = read_params(step_dir / item, key)
        assert {tuple(map(str, p)) for p in saved} == {p for p in trained}
    frozen = read_params(run / "base" / "params", key=None)
    assert {tuple(map(str, p)) for p in frozen} == {p for p in base}


def _logits(model, tokens, segs) -> np.ndarray:
    return np.asarray(model(jnp.asarray(tokens), segment_ids_BxT=jnp.asarray(segs)))


def test_unmerged_merged_transformers_and_peft_logits_agree(sst, lora_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _, pre = sst
    run, _ = lora_run
    loaded = load_run(run)
    assert isinstance(loaded.model.backbone.layers[0].attn.q_proj, LoRALinear)
    tokens = np.array([[2, 5, 9, 11, 40, 3, 0, 0], [2, 7, 8, 3, 0, 0, 0, 0]], np.int32)
    segs = (tokens != 0).astype(np.int32)
    want = _logits(loaded.model, tokens, segs)
    merged = merge_lora(loaded.model)
    assert not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(merged))
    np.testing.assert_allclose(_logits(merged, tokens, segs), want, atol=1e-5, rtol=0)
    # the adapters matter: without them (B = 0) the logits move
    plain = _logits(merge_lora(_zero_b(load_run(run).model)), tokens, segs)
    assert np.abs(plain - want).max() > 1e-3

    out, adapters, base = tmp_path / "merged", tmp_path / "adapters", tmp_path / "base"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert main(["export", "--run", str(run), "--out", str(adapters), "--adapters-only"]) == 0
    assert main(["export", "--run", str(pre), "--out", str(base)]) == 0
    np.testing.assert_allclose(_logits(load_model(out).model, tokens, segs), want, atol=1e-5,
                               rtol=0)
    export_run(run, tmp_path / "api")  # the Python API merges too
    np.testing.assert_allclose(_logits(load_model(tmp_path / "api").model, tokens, segs), want,
                               atol=1e-5, rtol=0)
    ids, mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(segs)
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=2), adapters).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hf(input_ids=ids, attention_mask=mask).logits.numpy(), want,
                                   atol=1e-5, rtol=0)
        np.testing.assert_allclose(peft(input_ids=ids, attention_mask=mask).logits.numpy(),
                                   want, atol=1e-5, rtol=0)


def _zero_b(model):
    for _, node in nnx.iter_graph(model):
        if isinstance(node, LoRALinear):
            node.lora.lora_b.set_value(jnp.zeros_like(node.lora.lora_b[...]))
    return model


@pytest.mark.parametrize("command,change,culprit", [
    ("finetune", {"targets": ["backbone.layers.*.attn.query"]}, "backbone.layers.0.attn.q_proj"),
    ("finetune", {"rank": -1}, "finetune.lora.rank"),
    ("finetune", {"rank": 33}, "backbone.layers.0.attn.k_proj"),
    ("pretrain", {"rank": 4}, "pretraining"),
])
def test_bad_lora_settings_exit_2_naming_the_culprit(sst, tmp_path, capsys, command, change,
                                                     culprit):
    root, pre = sst
    raw = _raw(root, pre)
    raw["finetune"]["lora"].update(change)
    if command == "pretrain":
        raw["train"]["task"], raw["model"] = "masked", MODEL
        raw["data"] = {"train": f"text:{root / 'corpus.txt'}", "seq_len": 32}
        del raw["finetune"]["init_from"]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main([command, "--config", str(cfg), "--run", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "finetune.lora" in err and culprit in err, err
    assert not (tmp_path / "run").exists()  # refused before the run directory is written



def test_a_lora_run_as_init_from_gives_its_merged_weights(lora_run):
    run, _ = lora_run
    merged = merge_lora(load_run(run).model)
    want = _flat(nnx.to_pure_dict(nnx.state(merged.backbone, nnx.Param)))
    got = _flat(nnx.to_pure_dict(load_pretrained(str(run)).backbone))
    assert set(got) == set(want) and not any("lora" in k for k in got)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_info_shows_the_lora_settings(lora_run, capsys):
    run, summary = lora_run
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("lora:"))
    assert "rank " in line and f"trained {summary['trainable_params']:,}" in line
