"""A LoRA run killed with SIGKILL mid-training resumes bit for bit: rerunning the same
`jaxlm finetune` command ends with the same adapters, heads, optimizer state and frozen base as a
run that was never interrupted."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxlm.checkpoint import check_step_dir, read_params

REPO = Path(__file__).resolve().parents[1]
STEPS = 40


@pytest.fixture(scope="module")
def config(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("lora_kill")
    src = data_dir / "sst2"
    for name, n in (("train.txt", 300), ("dev.txt", 24), ("test.txt", 24)):
        (root / name).write_text("\n".join((src / name).read_text().splitlines()[:n]) + "\n")
    cfg = {"name": "lora_kill",
           "model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2,
                     "max_len": 32, "dropout": 0.1},
           "data": {"train": f"labeled:{root}", "seq_len": 32,
                    "tokenizer": {"kind": "char"}},  # deterministic
           "optim": {"lr": 1e-2, "weight_decay": 0.1},
           "mesh": {"num_devices": 1},
           "train": {"task": "classification", "steps": STEPS, "batch_size": 8, "grad_accum": 2,
                     "eval_every": 0, "log_every": 5, "checkpoint_every": 5,
                     "keep_checkpoints": 2},
           "finetune": {"lora": {"rank": 4, "dropout": 0.1, "targets": ["attention", "mlp"]}}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cfg: Path, run: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", "finetune", "--config", str(cfg),
                             "--run", str(run), "--quiet"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps(run: Path) -> list[int]:
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _arrays(run: Path) -> dict:
    """Every array of the final train state (trained part) and of the frozen base."""
    state = read_params(run / "checkpoints" / str(STEPS) / "state", key=None)
    base = read_params(run / "base" / "params", key=None)
    return {**{("state",) + k: v for k, v in state.items()},
            **{("base",) + k: v for k, v in base.items()}}


def test_lora_run_resumes_bitwise_after_sigkill(config, tmp_path):
    cache = tmp_path / "jit_cache"
    ref, run = tmp_path / "ref", tmp_path / "killed"
    proc = _launch(config, ref, cache)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    proc = _launch(config, run, cache)
    t0 = time.monotonic()
    while not [s for s in _steps(run) if s >= 10] and proc.poll() is None:
        assert time.monotonic() - t0 < 600
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = max(_steps(run))
    assert 10 <= killed_at < STEPS and check_step_dir(run / "base")[0] is True

    proc = _launch(config, run, cache)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    want, got = _arrays(ref), _arrays(run)
    assert set(want) == set(got)
    assert any(k[0] == "base" for k in want) and any("lora_b" in k for k in want)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    # the checkpoints hold no base weight: just the trained part and its optimizer state
    assert not any(k[0] == "state" and k[1] == "params" and "lora" not in k and k[2] != "head"
                   for k in got)
