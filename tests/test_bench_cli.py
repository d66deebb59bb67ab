"""`jaxlm bench`: memory, speed and MFU of a config's train step, from the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.train.bench import random_lm_batch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.num_layers=2", "--set", "model.d_model=32", "--set", "model.num_heads=2",
        "--set", "model.max_len=32", "--set", "data.seq_len=32", "--set", "train.batch_size=8"]


def jaxlm(*args, devices=1):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_times_steps_and_reports_memory_and_mfu():
    out = jaxlm("bench", "--config", "configs/shakespeare_char.yaml", *TINY,
                "--set", "model.vocab_size=65", "--steps", "3", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["params"] > 0 and r["devices"] == 1 and r["dtype"] == "float32"
    assert r["attention"] == "blockwise" and r["tokens_per_step"] == 8 * 32
    assert r["memory"]["argument"] > 3 * 4 * r["params"]  # float32 params + AdamW mu, nu
    assert r["step_s"] > 0 and r["tokens_per_s"] == r["tokens_per_step"] / r["step_s"]
    assert 0 < r["mfu"] < 1 and r["peak_source"].startswith("measured")
    assert r["losses"][-1] < r["losses"][0] + 1.0


def test_bench_compile_only_on_an_fsdp_mesh():
    out = jaxlm("bench", "--config", "configs/shakespeare_char.yaml", *TINY,
                "--set", "model.vocab_size=64", "--set", "mesh.fsdp=4", "--compile-only",
                devices=4)
    assert out.returncode == 0, out.stderr
    assert "memory per device: arguments" in out.stdout
    assert "fsdp=4" in out.stdout and "'fsdp'" in out.stdout  # parameters sharded over fsdp
    assert "step:" not in out.stdout


def test_bench_without_a_vocabulary_size_is_a_clear_error():
    out = jaxlm("bench", "--config", "configs/shakespeare_char.yaml", *TINY, "--compile-only")
    assert out.returncode == 2
    assert "model.vocab_size" in out.stderr and "Traceback" not in out.stderr


def test_random_lm_batch_is_shaped_like_the_pipelines_and_refuses_classification():
    cfg = load_config(REPO / "configs/shakespeare_char.yaml",
                      ["data.seq_len=16", "train.batch_size=4"])
    batch = random_lm_batch(cfg, vocab=65)
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
    assert np.array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])  # shifted windows
    assert batch["inputs"].min() >= 0 and batch["targets"].max() < 65
    assert np.all(batch["weights"] == 1)
    assert np.array_equal(random_lm_batch(cfg, vocab=65)["inputs"], batch["inputs"])  # seeded
    with pytest.raises(ConfigError, match="train.task"):
        random_lm_batch(load_config(REPO / "configs/sst2_scratch.yaml"), vocab=100)


def test_bench_times_a_lora_finetunes_step_with_optimizer_state_for_the_adapters_only():
    from jaxlm.train.bench import bench

    sets = ["model.family=llama", "model.num_layers=2", "model.d_model=64", "model.num_heads=4",
            "model.max_len=32", "model.vocab_size=512", "data.seq_len=32", "train.batch_size=8",
            "mesh.num_devices=1", "train.task=generative"]
    lora = ["finetune.lora.rank=2", "finetune.lora.targets=[attention]"]
    full = bench(load_config(REPO / "configs/shakespeare_char.yaml", sets), compile_only=True)
    low = bench(load_config(REPO / "configs/shakespeare_char.yaml", sets + lora), steps=2,
                warmup=1)
    assert full.trainable_params == full.params
    # adapters: A [64, 2] and B [2, 64] on q, k, v, o of both layers
    assert low.params - full.params == 2 * 4 * (64 * 2 + 2 * 64)
    assert low.trainable_params == low.params - full.params
    # AdamW's two moments for the adapters alone: arguments shrink by about 2 x the frozen base
    frozen_bytes = 4 * (low.params - low.trainable_params)
    assert full.memory["argument"] - low.memory["argument"] > 1.9 * frozen_bytes
    assert low.step_s > 0 and np.isfinite(low.losses).all()
    with pytest.raises(ConfigError, match="pretraining"):  # LoRA is for fine-tuning tasks
        bench(load_config(REPO / "configs/shakespeare_char.yaml",
                          sets[:-1] + lora), compile_only=True)
