"""SIGTERM/SIGINT while training: checkpoint at the current step on every host, exit 143/130 with
the command that resumes; a second Ctrl-C quits at once."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlm.train.fit as fit_mod
import jaxlm.train.trainer as trainer_mod
from jaxlm.config import config_from_dict
from jaxlm.errors import TrainingStopped
from jaxlm.checkpoint import check_step_dir
from jaxlm.train.preemption import PreemptionGuard
from jaxlm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]


def test_hosts_agree_on_the_step_to_stop_at():
    """Two simulated hosts: only host B gets SIGTERM (at step 7); both stop at step 10, the next
    agreement point, and exchange flags only every `check_every` steps."""
    calls = []
    hosts: list[PreemptionGuard] = []

    def allgather(key, value, previous):
        calls.append((key, value, previous))
        return [h.signum or 0 for h in hosts]

    hosts += [PreemptionGuard(5, process_count=2, allgather=allgather, quiet=True)
              for _ in range(2)]
    stops = {}
    for step in range(1, 13):
        if step == 7:
            hosts[1]._handle(signal.SIGTERM, None)
        for i, h in enumerate(hosts):
            if h.should_stop(step):
                stops.setdefault(i, step)
    assert stops == {0: 10, 1: 10}
    assert [c[0].rsplit("_", 1)[1] for c in calls] == ["5", "5", "10", "10"]  # no per-step sync
    assert calls[2][2] == calls[0][0]  # each exchange retires the previous one's key
    assert hosts[0].stopped(10, "d").exit_code == 143


def test_single_host_stops_at_once_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(100, process_count=1, quiet=True) as g:
        assert not g.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: recorded, not a KeyboardInterrupt
        assert g.should_stop(2) and g.stopped(2, "d").exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def _signal_at(monkeypatch, step: int, sig: int) -> None:
    """Send `sig` as the loop moves its `step`-th batch, one step per call (train.steps_per_call
    pinned to 1; tests/test_steps_per_call.py signals inside a multi-step call)."""
    monkeypatch.setattr(fit_mod, "AUTO_STEPS_PER_CALL", 1)
    real, n = trainer_mod.put_batch, {"i": 0}

    def put(batch, sharding):
        n["i"] += 1
        if n["i"] == step:
            os.kill(os.getpid(), sig)
        return real(batch, sharding)

    monkeypatch.setattr(trainer_mod, "put_batch", put)


def test_sigterm_in_the_loop_saves_that_step_and_resume_matches(tiny_corpus, tmp_path,
                                                                 monkeypatch):
    raw = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2,
                     "max_len": 32},
           "data": {"train": f"text:{tiny_corpus}", "seq_len": 32}, "mesh": {"num_devices": 1},
           "train": {"steps": 10, "batch_size": 4, "eval_every": 0, "log_every": 5,
                     "checkpoint_every": 5}}
    full = pretrain(config_from_dict(raw), str(tmp_path / "full"), show_progress=False)
    _signal_at(monkeypatch, 7, signal.SIGTERM)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped) as info:
        pretrain(config_from_dict(raw), str(run), show_progress=False)
    assert info.value.exit_code == 143 and info.value.step == 7
    assert "Rerun the same command to resume from step 7" in str(info.value)
    assert check_step_dir(run / "checkpoints" / "7")[0] is True
    assert not (run / "summary.json").exists()  # not a finished run
    monkeypatch.undo()
    resumed = pretrain(config_from_dict(raw), str(run), show_progress=False)
    assert resumed["resumed_from"] == 7 and resumed["step"] == 10
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        full["state"].params, resumed["state"].params)
    assert all(jax.tree.leaves(same))  # bit for bit


WORKER = r"""
import os, signal, sys
import jax
port, pid, run, corpus = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
term_step, per_call = int(sys.argv[5]), sys.argv[6]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
import jaxlm.train.trainer as loop
real, n = loop.put_batch, {"i": 0}
def put(batch, sharding):  # SIGTERM reaches one host only, at its term_step-th call
    n["i"] += 1
    if pid == 1 and n["i"] == term_step:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(batch, sharding)
loop.put_batch = put
from jaxlm.cli import main
sys.exit(main(["pretrain", "--config", "configs/shakespeare_char.yaml", "--run", run,
  "--quiet", "--set", f"data.train=text:{corpus}", "--set", "model.num_layers=1",
  "--set", "model.d_model=32", "--set", "model.num_heads=2", "--set", "data.seq_len=32",
  "--set", "train.batch_size=8", "--set", "train.steps=40", "--set", "train.eval_every=0",
  "--set", "train.log_every=5", "--set", "train.checkpoint_every=10",
  "--set", "train.preemption_check_every=4", "--set", f"train.steps_per_call={per_call}"]))
"""


def _two_hosts(run: Path, corpus: Path, term_step: int, per_call: int = 1
               ) -> list[tuple[int, str]]:
    port = str(random.randint(20000, 40000))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), str(run), str(corpus),
                               str(term_step), str(per_call)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]


@pytest.mark.parametrize("per_call, term_call", [(1, 7), (16, 3)])
def test_sigterm_on_one_of_two_hosts_stops_both_at_the_same_step(tiny_corpus, tmp_path,
                                                                 per_call, term_call):
    """Two real processes (jax.distributed): host 1 alone gets SIGTERM as it moves the batch of
    step 7 (one step per call), or of steps 6-8 (16 steps per call: calls end at the steps where
    logging, every 5, and the hosts' agreement, every 4, are due); both hosts save one checkpoint
    at step 8 (the next agreement point) and exit 143."""
    run = tmp_path / "run"
    outs = _two_hosts(run, tiny_corpus, term_call, per_call)
    for code, err in outs:
        assert code == 143, err[-3000:]
        assert "saved a checkpoint at step 8" in err and "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["8"]
    assert check_step_dir(run / "checkpoints" / "8")[0] is True


@pytest.mark.slow
def test_two_hosts_resume_after_a_one_host_sigterm(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    assert [c for c, _ in _two_hosts(run, tiny_corpus, 7)] == [143, 143]
    outs = _two_hosts(run, tiny_corpus, -1)
    assert [c for c, _ in outs] == [0, 0], outs[0][1][-3000:]
    assert "40" in [p.name for p in (run / "checkpoints").iterdir()]


def test_finetune_stops_on_sigterm_and_resumes(data_dir, tmp_path, monkeypatch):
    sst = tmp_path / "sst"
    sst.mkdir()
    for name, n in (("train.txt", 120), ("dev.txt", 40)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (sst / name).write_text("\n".join(lines) + "\n")
    raw = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2,
                     "max_len": 64},
           "data": {"train": f"labeled:{sst}", "seq_len": 32,
                    "tokenizer": {"kind": "wordpiece", "vocab_size": 300}},
           "mesh": {"num_devices": 1},
           "train": {"task": "classification", "steps": 6, "batch_size": 8,
                     "eval_every": 3, "log_every": 3, "checkpoint_every": 3}}
    from jaxlm.train.finetune import finetune
    _signal_at(monkeypatch, 4, signal.SIGTERM)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped) as info:
        finetune(config_from_dict(raw), str(run), show_progress=False)
    assert info.value.exit_code == 143 and info.value.step == 4
    assert check_step_dir(run / "checkpoints" / "4")[0] is True
    monkeypatch.undo()
    summary = finetune(config_from_dict(raw), str(run), show_progress=False)
    assert summary["resumed_from"] == 4 and summary["step"] == 6 and "validation" in summary
