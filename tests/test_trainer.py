"""The trainer's loop and hooks, and tasks of one's own through the same driver as the CLI's."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import config_from_dict
from jaxlm.tasks import CausalLMTask, token_loss
from jaxlm.train.fit import train
from jaxlm.train.trainer import Hook, StepInfo, Trainer, stop_at


class _FakeSteps:
    """Stands in for CompiledSteps: counts dispatches; the 'state' is the step number."""

    batch_sharding = None

    def __init__(self):
        self.dispatched = 0

    def train(self, state, batch):
        self.dispatched += 1
        return state + 1, {"loss": float(state + 1)}


def test_deferred_hooks_see_step_n_after_step_n_plus_1_is_dispatched(monkeypatch):
    monkeypatch.setattr("jaxlm.train.trainer.put_batch", lambda b, s: b)
    steps = _FakeSteps()
    trainer = Trainer(steps, total_steps=7)
    seen = []
    trainer.add_hook(lambda t, i: seen.append(("deferred", i.step, steps.dispatched, i.state)),
                     every=3, deferred=True)
    trainer.add_hook(lambda t, i: seen.append(("now", i.step, steps.dispatched, i.state)),
                     every=3)
    final = trainer.fit(0, iter(lambda: {}, None))
    assert final == 7
    assert seen == [("now", 3, 3, 3), ("deferred", 3, 4, None), ("now", 6, 6, 6),
                    ("deferred", 6, 7, None), ("now", 7, 7, 7), ("deferred", 7, 7, None)]


def test_request_stop_and_stop_at_end_the_loop(monkeypatch):
    monkeypatch.setattr("jaxlm.train.trainer.put_batch", lambda b, s: b)
    trainer = Trainer(_FakeSteps(), total_steps=10, hooks=[stop_at(4)])
    last = []
    trainer.add_hook(lambda t, i: last.append(i.step), every=1, deferred=True)
    assert trainer.fit(0, iter(lambda: {}, None)) == 4 and last[-1] == 4
    assert Hook(lambda t, i: None, every=0).due(5, 5) and not Hook(
        lambda t, i: None, every=0, at_end=False).due(5, 5)
    assert isinstance(StepInfo(1, {}), StepInfo)


class _Pending:
    """A step's metric that records when the loop waited for it."""

    def __init__(self, step: int, waited: list[tuple[int, int]], steps: "_CountingSteps"):
        self.step, self.waited, self.steps = step, waited, steps

    def block_until_ready(self):
        self.waited.append((self.step, self.steps.dispatched))
        return self


class _CountingSteps(_FakeSteps):
    def __init__(self):
        super().__init__()
        self.waited: list[tuple[int, int]] = []

    def train(self, state, batch):
        self.dispatched += 1
        return state + 1, {"loss": _Pending(state + 1, self.waited, self)}


def test_the_host_runs_at_most_two_steps_ahead_of_the_device(monkeypatch):
    """Step n is waited for once step n + 2 is dispatched: the device always has a step queued,
    and the queue never grows (a deep one deadlocks multi-device XLA:CPU, test below)."""
    monkeypatch.setattr("jaxlm.train.trainer.put_batch", lambda b, s: b)
    steps = _CountingSteps()
    Trainer(steps, total_steps=8).fit(0, iter(lambda: {}, None))
    assert steps.waited == [(n, n + 2) for n in range(1, 7)]


DEEP_QUEUE = """
import sys
from jaxlm.config import config_from_dict
from jaxlm.train.fit import train
cfg = config_from_dict({
    "name": "deep", "model": {"num_layers": 2, "d_model": 128, "num_heads": 4, "max_len": 64},
    "data": {"train": "text:" + sys.argv[1], "seq_len": 64},
    "train": {"steps": 400, "batch_size": 16, "log_every": 1000, "eval_every": 0,
              "checkpoint_every": 1000}})
summary = train(cfg, sys.argv[2], show_progress=False, peak_flops=1e12)
print("devices", summary["devices"], "step", summary["step"])
"""


def test_a_long_unsynchronised_loop_on_two_cpu_devices_finishes(tmp_path, tiny_corpus):
    """Data parallel over two XLA:CPU devices with nothing that reads a step's result for 400
    steps (no logging, no validation): with the host free to queue them all, the steps'
    all-reduces deadlocked and XLA aborted the process."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", DEEP_QUEUE, str(tiny_corpus),
                          str(tmp_path / "run")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "devices 2 step 400" in out.stdout


class CausalWithConfidence(CausalLMTask):
    """A task of one's own: causal LM whose loss also reports the mean top-1 probability."""

    def loss(self, model, batch, dropout_rng):
        loss, aux = token_loss(model, batch, dropout_rng)
        top_BxT = jax.nn.log_softmax(model(batch["inputs"])).max(-1)
        w_BxT = batch["weights"].astype(jnp.float32)
        return loss, {**aux, "confidence": (jnp.exp(top_BxT) * w_BxT).sum()}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_task_of_ones_own_logs_its_extra_metric(tmp_path, tiny_corpus, grad_accum):
    cfg = config_from_dict({
        "name": "own", "model": {"num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
        "data": {"train": f"text:{tiny_corpus}", "seq_len": 32},
        "train": {"steps": 6, "batch_size": 16, "grad_accum": grad_accum, "log_every": 3,
                  "eval_every": 6, "checkpoint_every": 6}})
    summary = train(cfg, str(tmp_path / "run"), task=CausalWithConfidence(), show_progress=False,
                    peak_flops=1e12)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [3, 6]
    assert all(0.0 < r["confidence"] <= 1.0 for r in train_recs)
    val = summary["val"]
    assert 0.0 < val["confidence"] <= 1.0 and np.isfinite(val["loss"])
    assert summary["train"]["confidence"] == train_recs[-1]["confidence"]


def test_validation_waits_for_queued_steps_before_its_time_leaves_the_throughput(monkeypatch):
    """Steps still queued when validation starts are waited for before the hook's clock starts,
    so their time stays in the logged throughput instead of vanishing into the hook's."""
    from types import SimpleNamespace

    from jaxlm.train.hooks import TrainingHooks
    events = []
    monkeypatch.setattr("jaxlm.train.hooks.jax.block_until_ready",
                        lambda x: events.append(("wait", x)) or x)
    hooks = TrainingHooks(logger=SimpleNamespace(log=lambda *a: None), checkpointer=None,
                          iterator=None, layout=None, tokens_per_step=1,
                          evaluate=lambda params: events.append(("evaluate", params)) or {},
                          show_progress=False)
    hooks.bar, hooks.hook_s = SimpleNamespace(write=lambda *a: None), 0.0
    state = SimpleNamespace(step="step-5-array", params="params")
    hooks.validate(None, StepInfo(step=5, state=state, metrics={}))
    assert events[:2] == [("wait", "step-5-array"), ("evaluate", "params")]
    assert hooks.hook_s > 0.0
