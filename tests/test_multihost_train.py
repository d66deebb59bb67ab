"""Multi-host training: two real processes (2 fake CPU devices each, jax.distributed started by
`jaxlm pretrain` from JAXLM_* environment variables) train with the same losses as one process
with 4 devices; and the distributed settings are validated with clear errors."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm.config import DistributedConfig
from jaxlm.distributed import explicit_settings, initialize
from jaxlm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _pretrain(corpus, run_dir, devices, env_extra):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", **env_extra}
    for k in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID"):
        if k not in env_extra:
            env.pop(k, None)
    args = ["pretrain", "--config", str(REPO / "configs/shakespeare_char.yaml"), "--run",
            str(run_dir), "--quiet", "--set", f"data.train=text:{corpus}",
            "--set", "model.num_layers=2", "--set", "model.d_model=32", "--set", "model.num_heads=2",
            "--set", "data.seq_len=32", "--set", "model.max_len=32", "--set", "train.batch_size=8",
            "--set", "train.steps=4", "--set", "train.log_every=1", "--set", "train.eval_every=4",
            "--set", "train.eval_batches=2", "--set", "train.checkpoint_every=4",
            "--set", "data.prefetch=0", "--set", "optim.warmup_steps=0"]
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ([r["loss"] for r in rows if r["split"] == "train"],
            [r["loss"] for r in rows if r["split"] == "val"])


def test_two_processes_train_like_one_process_with_four_devices(tiny_corpus, tmp_path):
    port = str(random.randint(20000, 40000))
    multi = [_pretrain(tiny_corpus, tmp_path / "multi", 2,
                       {"JAXLM_COORDINATOR": f"127.0.0.1:{port}", "JAXLM_NUM_PROCESSES": "2",
                        "JAXLM_PROCESS_ID": str(i)}) for i in range(2)]
    single = _pretrain(tiny_corpus, tmp_path / "single", 4, {})
    for p in [*multi, single]:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    train_m, val_m = _losses(tmp_path / "multi")
    train_s, val_s = _losses(tmp_path / "single")
    assert len(train_m) == 4 and len(val_m) == 1
    assert train_m == pytest.approx(train_s, rel=1e-5, abs=1e-5)
    assert val_m == pytest.approx(val_s, rel=1e-5, abs=1e-5)
    assert train_m[-1] < train_m[0]
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["devices"] == 4
    # orbax wrote one checkpoint collectively from both processes
    assert [p.name for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()] \
        == ["4"]


def test_distributed_settings_from_config_and_environment(monkeypatch):
    for k in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert explicit_settings(DistributedConfig()) is None
    assert initialize(DistributedConfig()) is False  # one process: nothing to start
    cfg = DistributedConfig(coordinator="10.0.0.1:1234", num_processes=4, process_id=3)
    assert explicit_settings(cfg) == {"coordinator_address": "10.0.0.1:1234",
                                      "num_processes": 4, "process_id": 3}
    monkeypatch.setenv("JAXLM_COORDINATOR", "host0:9999")
    monkeypatch.setenv("JAXLM_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAXLM_PROCESS_ID", "1")
    assert explicit_settings(DistributedConfig()) == {"coordinator_address": "host0:9999",
                                                      "num_processes": 2, "process_id": 1}
    assert initialize(DistributedConfig(initialize="never")) is False


@pytest.mark.parametrize("cfg, env, words", [
    (DistributedConfig(num_processes=2, process_id=0), {}, ["coordinator", "host:port"]),
    (DistributedConfig(coordinator="host0"), {}, ["no port", "host:port"]),
    (DistributedConfig(coordinator="host0:1", num_processes=2, process_id=2), {},
     ["process_id", "num_processes"]),
    (DistributedConfig(coordinator="host0:1"), {"JAXLM_NUM_PROCESSES": "two"},
     ["JAXLM_NUM_PROCESSES", "not an integer"]),
])
def test_bad_distributed_settings_are_named(monkeypatch, cfg, env, words):
    for k in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        explicit_settings(cfg)
    for w in words:
        assert w in str(e.value)
