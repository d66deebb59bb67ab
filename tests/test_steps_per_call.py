"""Several train steps per call of the compiled step (train.steps_per_call): the same updates as
one step per call, results that do not depend on how steps are grouped into calls, hooks at
their own steps, and faults (SIGTERM, NaN) inside a call handled at the call's end."""
import os
import signal

import jax
import numpy as np
import pytest

import jaxlm.train.trainer as trainer_mod
from jaxlm.config import ModelConfig, OptimConfig, config_from_dict
from jaxlm.errors import ConfigError, TrainingStopped
from jaxlm.models import build_model
from jaxlm.sharding import make_mesh, put_batch, use_mesh
from jaxlm.tasks import token_loss
from jaxlm.train.optim import build_optimizer
from jaxlm.train.pretrain import pretrain
from jaxlm.train.steps import compile_steps
from jaxlm.train.trainer import Trainer, stack_batches


def _batches(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 30, (4, 17)).astype(np.int32)
        out.append({"inputs": toks[:, :-1], "targets": toks[:, 1:],
                    "weights": np.ones((4, 16), np.float32)})
    return out


@pytest.fixture(scope="module")
def steps():
    mcfg = ModelConfig(family="gpt2", vocab_size=32, num_layers=1, d_model=32, num_heads=2,
                       max_len=16).resolved()
    tx, lr = build_optimizer(OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2), 20)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with use_mesh(mesh):
        yield compile_steps(lambda: build_model(mcfg), tx, token_loss, lr, mesh)


def _fit(steps, per_call: int, total: int, every: tuple[int, ...] = (), seen=None):
    trainer = Trainer(steps, total, steps_per_call=per_call)
    for e in every:  # hooks that end calls at their steps
        trainer.add_hook(lambda t, i: None, every=e)
    if seen is not None:
        trainer.add_hook(lambda t, i: seen.append((i.step, float(i.metrics["loss"]))),
                         deferred=True)
    return trainer.fit(steps.init(), iter(_batches(total)))


def _host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_grouping_does_not_change_the_result_and_matches_one_step_per_call(steps):
    """7 steps as calls of 4 + 3, of 2 + 2 + 2 + 1 (a hook every 2 steps) and of 3 + 3 + 1:
    bit for bit the same state (one compiled loop body), and within float rounding of the
    one-step program; every step's loss (its own batch's) reaches the deferred hooks, in order."""
    seen_a, seen_b, seen_one = [], [], []
    a = _host(_fit(steps, 4, 7, seen=seen_a))
    b = _host(_fit(steps, 4, 7, every=(2,), seen=seen_b))
    c = _host(_fit(steps, 4, 7, every=(3,)))
    one = _host(_fit(steps, 1, 7, seen=seen_one))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, one))
    assert [s for s, _ in seen_a] == list(range(1, 8)) == [s for s, _ in seen_b]
    assert seen_a == seen_b
    np.testing.assert_allclose([v for _, v in seen_a], [v for _, v in seen_one], rtol=1e-5)


class _ManySteps:
    """Stands in for CompiledSteps with a multi-step call: the 'state' is the step number."""

    batch_sharding = stacked_sharding = None

    def __init__(self):
        self.calls: list[int] = []

    def train_many(self, state, batches, count):
        self.calls.append(int(count))
        loss = np.zeros(len(batches["x"]), np.float32)
        loss[:count] = batches["x"][:count, 0]
        return state + int(count), {"loss": loss}


def test_the_multi_step_program_traces_the_step_once():
    """`many_steps` takes its metrics' shapes and its loop body from one trace of the step
    (tracing a model's step is a visible part of a short job's start-up)."""
    from jaxlm.train.steps import many_steps
    traces = []

    def step(s, b):
        traces.append(b.shape)
        return s + b.sum(), {"loss": b.mean(), "rows": b.sum(axis=1)}

    run = jax.jit(lambda s, bs, n: many_steps(step, s, bs, n))
    state, metrics = run(np.float32(0), np.ones((4, 3, 2), np.float32), np.int32(3))
    assert traces == [(3, 2)]
    assert float(state) == 18.0 and metrics["rows"].shape == (4, 3)
    assert metrics["loss"].tolist() == [1.0, 1.0, 1.0, 0.0]  # rows past the count stay zeros


def test_calls_end_where_hooks_are_due_and_hooks_see_their_steps(monkeypatch):
    monkeypatch.setattr("jaxlm.train.trainer.put_batch", lambda b, s: b)
    steps = _ManySteps()
    trainer = Trainer(steps, total_steps=23, steps_per_call=8)
    now, logged, each = [], [], []
    trainer.add_hook(lambda t, i: now.append((i.step, i.state, float(i.metrics["loss"]))),
                     every=10)
    trainer.add_hook(lambda t, i: logged.append((i.step, float(i.metrics["loss"]))), every=5,
                     deferred=True)
    trainer.add_hook(lambda t, i: each.append(i.state), every=1)  # after every call
    final = trainer.fit(0, iter({"x": np.array([float(k)])} for k in range(1, 100)))
    assert final == 23
    assert steps.calls == [5, 5, 5, 5, 3]  # ends at 5, 10, 15, 20 (hooks), 23 (the last)
    assert each == [5, 10, 15, 20, 23]
    assert now == [(10, 10, 10.0), (20, 20, 20.0), (23, 23, 23.0)]  # step N's own metrics
    assert logged == [(5, 5.0), (10, 10.0), (15, 15.0), (20, 20.0), (23, 23.0)]


def test_stacking_refuses_batches_of_several_shapes_naming_the_setting():
    stacked = stack_batches(_batches(3), 4)
    assert stacked["inputs"].shape == (4, 4, 16) and not stacked["inputs"][3].any()
    odd = _batches(2)
    odd[1] = {k: v[:, :8] for k, v in odd[1].items()}
    with pytest.raises(ConfigError, match="train.steps_per_call: 1"):
        stack_batches(odd, 4)


def _raw(corpus, **train):
    return {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2,
                      "max_len": 32},
            "data": {"train": f"text:{corpus}", "seq_len": 32}, "mesh": {"num_devices": 1},
            "train": {"steps": 12, "batch_size": 4, "eval_every": 0, "log_every": 6,
                      "checkpoint_every": 6, "steps_per_call": 4, **train}}


def _fault_at_call(monkeypatch, call: int, fault) -> None:
    real, n = trainer_mod.put_batch, {"i": 0}

    def put(batch, sharding):
        n["i"] += 1
        if n["i"] == call:
            batch = fault(batch)
        return real(batch, sharding)

    monkeypatch.setattr(trainer_mod, "put_batch", put)


def test_sigterm_inside_a_call_saves_its_last_step_and_resume_matches(tiny_corpus, tmp_path,
                                                                      monkeypatch):
    """Calls of steps 1-4, 5-6, 7-10, 11-12: SIGTERM while the third is moved saves step 10."""
    full = pretrain(config_from_dict(_raw(tiny_corpus)), str(tmp_path / "full"),
                    show_progress=False)

    def term(batch):
        os.kill(os.getpid(), signal.SIGTERM)
        return batch

    _fault_at_call(monkeypatch, 3, term)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped) as info:
        pretrain(config_from_dict(_raw(tiny_corpus)), str(run), show_progress=False)
    assert info.value.exit_code == 143 and info.value.step == 10
    monkeypatch.undo()
    resumed = pretrain(config_from_dict(_raw(tiny_corpus)), str(run), show_progress=False)
    assert resumed["resumed_from"] == 10 and resumed["step"] == 12
    assert all(np.array_equal(x, y) for x, y in zip(_host(full["state"].params),
                                                   _host(resumed["state"].params)))


def _poison_second_step(batch):
    batch = {**batch, "weights": batch["weights"].copy()}
    batch["weights"][1, 0, 0] = np.nan  # step 2 of the call's 4
    return batch


def test_nan_inside_a_call_is_skipped_and_counted(tiny_corpus, tmp_path, monkeypatch):
    _fault_at_call(monkeypatch, 3, _poison_second_step)  # steps 7-10: step 8 is poisoned
    summary = pretrain(config_from_dict(_raw(tiny_corpus, on_nonfinite="skip")),
                       str(tmp_path / "run"), show_progress=False)
    assert summary["step"] == 12 and summary["nonfinite_steps"] == 1
    assert all(np.isfinite(x).all() for x in _host(summary["state"].params))


def test_nan_inside_a_call_stops_at_the_next_call_end_with_a_good_state(tiny_corpus, tmp_path,
                                                                        monkeypatch):
    """The step-12 log reads the fault (step 8's update dropped): the state of step 12 is saved
    and the error names step 8."""
    _fault_at_call(monkeypatch, 3, _poison_second_step)
    with pytest.raises(TrainingStopped) as info:
        pretrain(config_from_dict(_raw(tiny_corpus, steps=16)), str(tmp_path / "run"),
                 show_progress=False)
    assert info.value.exit_code == 3 and "at step 8" in str(info.value)
    assert info.value.step == 12


def test_several_steps_per_call_are_refused_for_batches_of_several_shapes(tmp_path, data_dir):
    raw = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2,
                     "max_len": 64},
           "data": {"train": f"labeled:{data_dir / 'sst2'}", "seq_len": 32,
                    "tokenizer": {"kind": "wordpiece", "vocab_size": 300}},
           "mesh": {"num_devices": 1},
           "train": {"task": "classification", "steps": 2, "batch_size": 8, "steps_per_call": 4}}
    from jaxlm.train.finetune import finetune
    with pytest.raises(ConfigError, match="steps_per_call") as info:
        finetune(config_from_dict(raw), str(tmp_path / "run"), show_progress=False)
    assert "one shape" in str(info.value)
    assert not (tmp_path / "run").exists()
    raw["train"]["steps_per_call"] = -1
    with pytest.raises(ConfigError, match="train.steps_per_call"):
        config_from_dict(raw)
