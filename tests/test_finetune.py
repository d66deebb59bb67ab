"""Fine-tuning: backbone transfer, head initialisation, freezing, mismatch errors, predict."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import config_from_dict
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.inference import predict_proba
from jaxlm.models import build_model
from jaxlm.run import load_run
from jaxlm.train.finetune import finetune
from jaxlm.train.init_from import check_backbone_shapes, load_pretrained
from jaxlm.train.pretrain import pretrain

MODEL = {"family": "bert", "num_layers": 2, "d_model": 32, "num_heads": 2, "max_len": 64}


@pytest.fixture(scope="module")
def sst_small(tmp_path_factory, data_dir):
    """300 / 100 / 100 SST-2 sentences as a labeled: directory, and their text as a corpus."""
    root = tmp_path_factory.mktemp("sst_small")
    src = data_dir / "sst2"
    for name, n in (("train.txt", 300), ("dev.txt", 100), ("test.txt", 100)):
        lines = (src / name).read_text().splitlines()[:n]
        (root / name).write_text("\n".join(lines) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(l.split(" ", 1)[1] for l in
                                (src / "train.txt").read_text().splitlines()[:1500]))
    return root, corpus


@pytest.fixture(scope="module")
def pretrained(sst_small, tmp_path_factory):
    _, corpus = sst_small
    run = tmp_path_factory.mktemp("pre") / "run"
    cfg = config_from_dict({
        "model": MODEL, "mesh": {"num_devices": 1},
        "data": {"train": f"text:{corpus}", "seq_len": 32,
                 "tokenizer": {"kind": "wordpiece", "vocab_size": 400}},
        "optim": {"lr": 3e-3},
        "train": {"task": "masked", "steps": 6, "batch_size": 8, "eval_every": 6,
                  "eval_batches": 1, "checkpoint_every": 6, "log_every": 3}})
    pretrain(cfg, str(run), show_progress=False)
    return run


def ft_config(data_root: Path, **sections):
    raw = {"mesh": {"num_devices": 1},
           "data": {"train": f"labeled:{data_root}", "seq_len": 32},
           "optim": {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
           "train": {"task": "classification", "steps": 4, "batch_size": 8, "eval_every": 2,
                     "log_every": 2, "checkpoint_every": 4},
           "finetune": {"pooling": "mean"}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


def _flat(state):
    """{"a/b/c": array} of an nnx.State or a plain nested dict (the train state's params)."""
    if isinstance(state, nnx.State):
        state = nnx.to_pure_dict(state)
    return {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state)}


def test_init_from_copies_every_backbone_parameter_and_only_initialises_the_head(
        sst_small, pretrained, tmp_path):
    root, _ = sst_small
    cfg = ft_config(root, optim={"lr": 0.0}, train={"steps": 1, "eval_every": 1},
                    finetune={"init_from": str(pretrained)})
    summary = finetune(cfg, str(tmp_path / "ft"), show_progress=False)
    params = summary["state"].params
    pre = load_pretrained(str(pretrained))
    want, got = _flat(pre.backbone), _flat(params["backbone"])
    assert set(want) == set(got) and len(want) > 10
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the head is a fresh initialisation (the classifier's own init for this seed; jitted vs eager
    # initialisers differ in the last bits only), not a copy of anything in the checkpoint
    fresh = nnx.state(build_model(pre.model, "classification", seed=cfg.train.seed, num_labels=2,
                                  pooling="mean"), nnx.Param)
    for k, v in _flat(fresh["head"]).items():
        np.testing.assert_allclose(_flat(params["head"])[k], v, atol=1e-7, err_msg=k)
    # and the inherited model matches the checkpoint's shape without the config repeating it
    spec = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert spec["model"]["d_model"] == 32 and spec["head"]["class_names"] == ["0", "1"]


def test_frozen_backbone_does_not_move_but_the_head_does(sst_small, pretrained, tmp_path):
    root, _ = sst_small
    cfg = ft_config(root, optim={"lr": 1e-2}, finetune={"init_from": str(pretrained),
                                                         "freeze_backbone": True})
    params = finetune(cfg, str(tmp_path / "ft"), show_progress=False)["state"].params
    pre = _flat(load_pretrained(str(pretrained)).backbone)
    for k, v in _flat(params["backbone"]).items():
        np.testing.assert_array_equal(v, pre[k], err_msg=k)
    fresh = _flat(nnx.state(build_model(load_pretrained(str(pretrained)).model, "classification",
                                        num_labels=2, pooling="mean"), nnx.Param)["head"])
    assert any(np.abs(v - fresh[k]).max() > 1e-4 for k, v in _flat(params["head"]).items())


def test_model_keys_that_contradict_the_checkpoint_are_listed(sst_small, pretrained, tmp_path):
    root, _ = sst_small
    cfg = ft_config(root, model={"d_model": 64, "num_layers": 3},
                    finetune={"init_from": str(pretrained)})
    with pytest.raises(ConfigError) as e:
        finetune(cfg, str(tmp_path / "ft"), show_progress=False)
    assert "model.d_model is 64 in the config but 32" in str(e.value)
    assert "model.num_layers is 3" in str(e.value)


def test_shape_mismatch_lists_the_parameters(pretrained):
    pre = load_pretrained(str(pretrained))
    import dataclasses
    other = dataclasses.replace(pre.model, d_ff=pre.model.d_ff * 2)
    expected = nnx.state(build_model(other, "classification", num_labels=2), nnx.Param)["backbone"]
    with pytest.raises(CheckpointError) as e:
        check_backbone_shapes(expected, pre.backbone, "ckpt")
    msg = str(e.value)
    assert "layers/0/mlp/up_proj/kernel: shape (32, 128) in the checkpoint, (32, 256)" in msg
    assert "layers/1/mlp/down_proj/kernel" in msg


def test_scratch_run_learns_and_predict_batches_match_single_examples(sst_small, tmp_path):
    root, _ = sst_small
    cfg = ft_config(root, model=MODEL, optim={"lr": 3e-3},
                    data={"tokenizer": {"kind": "wordpiece", "vocab_size": 400}},
                    train={"steps": 80, "batch_size": 32, "log_every": 5, "eval_every": 40,
                           "checkpoint_every": 80})
    run_dir = tmp_path / "ft"
    summary = finetune(cfg, str(run_dir), show_progress=False)
    # ~8.5 epochs over 300 sentences: a model that learns memorises them (ln 2 = 0.69 at chance).
    # One batch's loss swings a lot (the WordPiece vocabulary differs between processes), so the
    # last four logged losses are averaged. 30 steps of batch 8 sat at chance.
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r["loss"] for r in logged if r["split"] == "train"][-4:]
    assert sum(last) / len(last) < 0.35 and summary["test"]["n"] == 100
    assert (run_dir / "eval_test.json").is_file() and summary["best"]["step"] in (40, 80)
    run = load_run(run_dir)
    texts = [l.split(" ", 1)[1] for l in (root / "test.txt").read_text().splitlines()[:10]]
    batched = predict_proba(run, texts, batch_size=8)
    single = np.concatenate([predict_proba(run, [t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(-1), 1.0, atol=1e-5)
    # the best checkpoint reproduces the final test report
    from jaxlm.evaluation import evaluate_run
    report = evaluate_run(str(run_dir))
    assert report["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_final_validation_report_reuses_the_kept_checkpoints_validation(sst_small, tmp_path,
                                                                        count_evaluations):
    """The best checkpoint's validation report is the final one (the same batches and
    parameters), so the dev split is scored once per validation, not again at the end; it
    equals a fresh evaluation of the kept checkpoint."""
    from jaxlm.evaluation import evaluate_run
    from jaxlm.tasks.classification import ClassificationTask

    root, _ = sst_small
    calls = count_evaluations(ClassificationTask)
    cfg = ft_config(root, model=MODEL, train={"steps": 6, "eval_every": 2})
    summary = finetune(cfg, str(tmp_path / "run"), show_progress=False)
    assert len(calls) == 3 + 1  # validation at steps 2, 4, 6, then only the test split
    fresh = evaluate_run(str(tmp_path / "run"), split="validation")
    assert fresh["accuracy"] == summary["validation"]["accuracy"]
    assert fresh["confusion_matrix"] == summary["validation"]["confusion_matrix"]
    assert fresh["loss"] == pytest.approx(summary["validation"]["loss"], rel=1e-6)


def test_pretrained_init_skips_the_replaced_weights_and_equals_init_then_copy(
        sst_small, pretrained, tmp_path):
    """The fine-tuning state is built in one program that never draws the weights the checkpoint
    replaces (a smaller program: faster to compile), bit for bit the fresh init with the
    checkpoint copied in, on the training shardings (here FSDP over 2 devices)."""
    from jaxlm.models.lora import join_adapters, split_adapters
    from jaxlm.sharding import use_mesh
    from jaxlm.train import fit
    from jaxlm.train.init_from import init_from_pretrained

    root, _ = sst_small
    cfg = ft_config(root, mesh={"num_devices": 2, "data": 1, "fsdp": 2},
                    finetune={"init_from": str(pretrained)})
    s = fit.prepare(cfg, str(tmp_path / "ft"), False, None)
    with use_mesh(s.mesh, cfg.mesh.rules):
        steps = fit.compile_task_steps(s)
        init, given = fit.pretrained_init(steps, s)
        new = init(given)
        old = steps.init()
        params, adapters = split_adapters(old.params)
        params = init_from_pretrained(params, s.pretrained,
                                      split_adapters(steps.state_sharding.params)[0], False)
        old = old.replace(params=join_adapters(params, adapters))
        assert jax.tree.structure(new) == jax.tree.structure(old)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert a.sharding == b.sharding
        size = lambda f, *a: len(f.lower(*a).compile().as_text())  # noqa: E731
        assert size(init, given) < 0.25 * size(steps.init)  # the backbone's draws are gone
