"""Numerical faults: NaN injected into a batch is never applied; train.on_nonfinite says whether
training then skips and counts (skip) or saves the last good state and stops naming the step
(stop)."""
import jax
import numpy as np
import pytest

from cli_utils import poison_step as _poison_step  # noqa: E402
from jaxlm.cli import main
from jaxlm.config import ModelConfig, OptimConfig, config_from_dict
from jaxlm.errors import TrainingStopped
from jaxlm.models import build_model
from jaxlm.run import Run
from jaxlm.sharding import make_mesh, use_mesh
from jaxlm.tasks import token_loss
from jaxlm.train.optim import build_optimizer
from jaxlm.train.pretrain import pretrain
from jaxlm.train.steps import compile_steps, put_batch


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _batch(rng, poison=None):
    tokens = rng.integers(0, 30, (4, 17)).astype(np.int32)
    b = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
         "weights": np.ones((4, 16), np.float32)}
    if poison is not None:
        b["weights"][1, 3] = poison
    return b


def test_compiled_step_does_not_apply_a_poisoned_batch():
    mcfg = ModelConfig(family="gpt2", vocab_size=32, num_layers=1, d_model=32, num_heads=2,
                       max_len=16).resolved()
    tx, lr = build_optimizer(OptimConfig(lr=1e-2, weight_decay=0.1), 10)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(mcfg), tx, token_loss, lr, mesh)
        state, m = steps.train(steps.init(), put_batch(_batch(rng), steps.batch_sharding))
        assert int(m["nonfinite_steps"]) == 0 and int(m["nonfinite_last_step"]) == -1
        for n, poison in enumerate([np.nan, np.inf], start=1):
            before = _host(state)
            state, m = steps.train(state, put_batch(_batch(rng, poison), steps.batch_sharding))
            after = _host(state)
            assert not np.isfinite(float(m["loss"]))
            assert _same(before.params, after.params)  # bitwise: the update was dropped
            assert _same(before.opt_state, after.opt_state)  # Adam moments and count too
            assert int(after.step) == int(before.step) + 1  # the batch still counts
            assert int(m["nonfinite_steps"]) == n
            assert int(m["nonfinite_last_step"]) == int(after.step)
            state, m = steps.train(state, put_batch(_batch(rng), steps.batch_sharding))
            later = _host(state)
            assert not _same(after.params, later.params)  # training continues
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(later.params))
            assert int(m["nonfinite_steps"]) == n  # the counter only counts bad steps


def _cfg(corpus, **train):
    return {
        "model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
        "data": {"train": f"text:{corpus}", "seq_len": 32},
        "mesh": {"num_devices": 1},
        "train": {"steps": 8, "batch_size": 4, "eval_every": 0, "log_every": 1,
                  "checkpoint_every": 1, "keep_checkpoints": 10, **train},
    }


def test_skip_mode_drops_the_update_counts_it_and_trains_on(tiny_corpus, tmp_path, monkeypatch):
    import json
    _poison_step(monkeypatch, 3)
    run = tmp_path / "run"
    summary = pretrain(config_from_dict(_cfg(tiny_corpus, on_nonfinite="skip")), str(run),
                       show_progress=False)
    assert summary["step"] == 8 and summary["nonfinite_steps"] == 1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows if r["split"] == "train"] == [0, 0, 1, 1, 1, 1, 1, 1]
    p2, _ = Run(run).read_params(2)
    p3, _ = Run(run).read_params(3)
    p4, _ = Run(run).read_params(4)
    assert _same(p2, p3) and not _same(p3, p4)  # step 3 skipped, step 4 trained
    assert all(np.isfinite(v).all() for v in Run(run).read_params("latest")[0].values())


def test_stop_mode_saves_the_last_good_state_and_exits_naming_the_step(
        tiny_corpus, tmp_path, monkeypatch, capsys):
    import yaml
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_cfg(tiny_corpus, on_nonfinite="stop")))
    run = tmp_path / "run"
    argv = ["pretrain", "--config", str(cfg_file), "--run", str(run), "--quiet"]
    _poison_step(monkeypatch, 4)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Non-finite loss or gradients (NaN/Inf) at step 4" in err
    assert "saved a checkpoint at step 4" in err and "resume with: jaxlm pretrain" in err
    assert "Traceback" not in err
    p3, _ = Run(run).read_params(3)
    p4, _ = Run(run).read_params(4)
    assert _same(p3, p4)  # the checkpoint at step 4 holds the last good parameters
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        1, 2, 3, 4]
    monkeypatch.undo()  # the fault is gone: the same command resumes and finishes
    assert main(argv) == 0
    assert "done: step 8" in capsys.readouterr().out


def test_stop_mode_raises_from_the_api_with_exit_code_3(tiny_corpus, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 2)
    cfg = config_from_dict(_cfg(tiny_corpus, log_every=4, checkpoint_every=4))
    with pytest.raises(TrainingStopped) as info:
        pretrain(cfg, str(tmp_path / "run"), show_progress=False)
    # seen at the first checkpoint step (4), which reads the counter before saving (no host sync
    # on other steps): the message names step 2
    assert info.value.exit_code == 3 and info.value.step == 4
    assert "at step 2" in str(info.value)


def test_stop_mode_between_checkpoints_saves_the_step_after_the_log_that_saw_it(
        tiny_corpus, tmp_path, monkeypatch):
    """Metrics are read one step late: a NaN at step 2 shows in step 4's log line, read while step 5
    runs, so the run stops and saves at step 5 (no checkpoint step in between to read the counter
    synchronously). The bad update was still never applied: the saved state equals a skip-mode
    run's at step 5, bit for bit; the message names step 2 and the same command resumes."""
    _poison_step(monkeypatch, 2)
    skip_run = tmp_path / "skip"
    pretrain(config_from_dict(_cfg(tiny_corpus, on_nonfinite="skip")), str(skip_run),
             show_progress=False)
    _poison_step(monkeypatch, 2)  # a fresh batch counter for the second run
    run = tmp_path / "run"
    raw = _cfg(tiny_corpus, log_every=4, checkpoint_every=8)
    with pytest.raises(TrainingStopped) as info:
        pretrain(config_from_dict(raw), str(run), show_progress=False)
    assert info.value.exit_code == 3 and info.value.step == 5
    assert "at step 2" in str(info.value) and "saved a checkpoint at step 5" in str(info.value)
    assert Run(run).checkpoint_steps() == [5]
    saved, _ = Run(run).read_params(5)
    assert all(np.isfinite(v).all() for v in saved.values())
    assert _same(saved, Run(skip_run).read_params(5)[0])  # step 2's update was dropped
    monkeypatch.undo()
    resumed = pretrain(config_from_dict(raw), str(run), show_progress=False)
    assert resumed["resumed_from"] == 5 and resumed["step"] == 8
    assert resumed["nonfinite_steps"] == 1  # the restored counter still holds step 2
