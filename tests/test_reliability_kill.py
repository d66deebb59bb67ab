"""Kill a real `jaxlm pretrain` process (SIGKILL at random points, mid-save included, and
SIGTERM/SIGINT), rerun the same command each time, and check that the final train state equals
an uninterrupted run's bit for bit (both restored with orbax)."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from jaxlm.checkpoint import TMP_MARKER, check_step_dir

REPO = Path(__file__).resolve().parents[1]
STEPS = 200


@pytest.fixture(scope="module")
def jit_cache(tmp_path_factory) -> Path:
    """A persistent compilation cache shared by every process of this module: each relaunch
    reuses the compiled steps instead of compiling again (same programs, same bits)."""
    return tmp_path_factory.mktemp("jit_cache")


def _config(tmp_path: Path, corpus: Path) -> Path:
    cfg = {"name": "kill", "model": {"family": "gpt2", "num_layers": 1, "d_model": 32,
                                     "num_heads": 2, "max_len": 32, "dropout": 0.1},
           "data": {"train": f"text:{corpus}", "seq_len": 32, "tokenizer": {"kind": "char"}},
           "optim": {"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.1},
           "mesh": {"num_devices": 1},
           "train": {"steps": STEPS, "batch_size": 4, "eval_every": 0, "log_every": 5,
                     "checkpoint_every": 5, "keep_checkpoints": 3, "async_checkpointing": True}}
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Run:
    """`jaxlm pretrain --config CFG --run DIR --quiet`, relaunched as often as needed."""

    def __init__(self, cfg: Path, run_dir: Path, cache: Path):
        self.cmd = [sys.executable, "-m", "jaxlm.cli", "pretrain", "--config", str(cfg),
                    "--run", str(run_dir), "--quiet"]
        self.dir, self.ckpts = run_dir, run_dir / "checkpoints"
        self.env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                    "JAX_COMPILATION_CACHE_DIR": str(cache),
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
        self.n = 0

    def start(self) -> subprocess.Popen:
        self.n += 1
        self.err_path = self.dir.parent / f"{self.dir.name}.{self.n}.err"
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.err_path.open("w"))
        return self.proc

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        return rc, self.err_path.read_text()

    def steps(self) -> list[int]:
        if not self.ckpts.is_dir():
            return []
        return sorted(int(p.name) for p in self.ckpts.iterdir() if p.name.isdigit())

    def tmp_dirs(self) -> list[str]:
        if not self.ckpts.is_dir():
            return []
        return [e.name for e in os.scandir(self.ckpts) if TMP_MARKER in e.name]

    def wait_until(self, pred, timeout: float = 300) -> bool:
        """Poll (1 ms) until pred() holds; False if the process ended first."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.001)
        raise TimeoutError("the run neither reached the point nor ended")

    # -- the interruptions ------------------------------------------------------------------
    def kill_mid_save(self) -> bool:
        """SIGKILL while orbax writes a checkpoint, after this process completed one (so there is
        progress to lose); True when the kill left orbax's tmp folder behind."""
        self.start()
        start = max(self.steps(), default=0)
        assert self.wait_until(lambda: max(self.steps(), default=0) > start and self.tmp_dirs())
        self.proc.send_signal(signal.SIGKILL)
        rc, _ = self.finish()
        assert rc == -signal.SIGKILL
        return bool(self.tmp_dirs())

    def kill_after(self, delay: float) -> None:
        """SIGKILL `delay` seconds after the process starts (startup, compile or training)."""
        self.start()
        time.sleep(delay)
        self.proc.send_signal(signal.SIGKILL)
        self.finish()

    def signal_training(self, sig: int, rng: random.Random) -> int:
        """SIGTERM/SIGINT a few steps after the next checkpoint: exit code, saved step."""
        self.start()
        before = max(self.steps(), default=0)
        assert self.wait_until(lambda: max(self.steps(), default=0) > before)
        time.sleep(rng.uniform(0.0, 0.3))
        self.proc.send_signal(sig)
        rc, err = self.finish()
        assert rc == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err
        assert "Traceback" not in err
        saved = int(err.split("saved a checkpoint at step ")[1].split()[0])
        assert f"Rerun the same command to resume from step {saved}" in err
        assert "resume with: jaxlm pretrain --config" in err
        assert saved < STEPS and saved in self.steps()
        assert check_step_dir(self.ckpts / str(saved))[0] is True  # complete and sealed
        return saved


def _final_state(run_dir: Path) -> tuple[dict, dict]:
    """(every array of the last checkpoint's train state as numpy, its data position)."""
    step_dir = run_dir / "checkpoints" / str(STEPS)
    meta = ocp.PyTreeCheckpointHandler().metadata((step_dir / "state").absolute())
    target = jax.tree.map(lambda m: np.zeros((), np.float32), meta)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    state = ocp.PyTreeCheckpointer().restore((step_dir / "state").absolute(),
                                             args=ocp.args.PyTreeRestore(item=target,
                                                                         restore_args=args))
    mgr = ocp.CheckpointManager((run_dir / "checkpoints").absolute(), item_names=("data",))
    data = mgr.restore(STEPS, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    mgr.close()
    return state, data


def _sources() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (REPO / "jaxlm").rglob("*.py")}


def _assert_same_final_state(ref: Run, run: Run, sources: dict[str, int]) -> None:
    # a shared working tree where someone edited jaxlm mid-test: say so rather than report a
    # state mismatch that the code under test did not cause (a clean checkout never gets here)
    assert _sources() == sources, ("jaxlm's source changed while the runs were launched, so they "
                                   "did not all run the same code; rerun the test")
    ref_state, ref_data = _final_state(ref.dir)
    state, data = _final_state(run.dir)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_state)[0]
    flat = dict(jax.tree_util.tree_flatten_with_path(state)[0])
    assert len(flat_ref) == len(flat) and len(flat_ref) > 10
    for path, a in flat_ref:  # params, optimizer state, step, RNG, counters: bit for bit
        np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(a),
                                      err_msg=jax.tree_util.keystr(path))
    assert data == ref_data


def _runs(tmp_path, corpus, cache) -> tuple[Run, Run]:
    cfg = _config(tmp_path, corpus)
    return Run(cfg, tmp_path / "reference", cache), Run(cfg, tmp_path / "interrupted", cache)


def test_sigkill_mid_save_and_sigterm_then_resume_equals_uninterrupted(tiny_corpus, tmp_path,
                                                                       jit_cache):
    rng = random.Random(0)
    sources = _sources()
    ref, run = _runs(tmp_path, tiny_corpus, jit_cache)
    # the reference compiles first (filling the cache), then runs beside the interrupted one
    ref.start()
    # polled every 1 ms, a save (~50 ms) is nearly always caught; retry the rare miss
    assert any(run.kill_mid_save() for _ in range(3)), "no kill landed inside a save"
    killed_at = max(run.steps())
    saved = run.signal_training(signal.SIGTERM, rng)
    err = run.err_path.read_text()
    # the resumed process reported the unfinished save, moved it aside, resumed before it
    assert "unfinished checkpoint" in err
    assert any(TMP_MARKER in p.name for p in (run.dir / "checkpoints.corrupt").iterdir())
    assert saved > killed_at
    run.start()
    rc, err = run.finish()
    assert rc == 0 and "Traceback" not in err, err
    assert ref.finish()[0] == 0
    assert not run.tmp_dirs()
    _assert_same_final_state(ref, run, sources)


@pytest.mark.slow
def test_many_random_kills_then_resume_equals_uninterrupted(tiny_corpus, tmp_path, jit_cache):
    seed = int(os.environ.get("JAXLM_KILL_SEED", "1"))
    rng = random.Random(seed)
    sources = _sources()
    ref, run = _runs(tmp_path, tiny_corpus, jit_cache)
    ref.start()
    assert ref.finish()[0] == 0
    mid_save_leftovers = 0
    events = ["startup", "mid_save", "random", "sigterm", "mid_save", "random", "sigint",
              "mid_save", "random"]
    rng.shuffle(events)
    for event in events:
        if run.steps() and max(run.steps()) >= STEPS - 20:
            break  # too close to the end for another interruption
        if event == "startup":
            run.kill_after(rng.uniform(0.5, 4.0))
        elif event == "mid_save":
            mid_save_leftovers += run.kill_mid_save()
        elif event == "random":
            run.start()
            before = max(run.steps(), default=0)
            assert run.wait_until(lambda: max(run.steps(), default=0) > before)
            time.sleep(rng.uniform(0.0, 0.5))
            run.proc.send_signal(signal.SIGKILL)
            run.finish()
        else:
            run.signal_training(signal.SIGTERM if event == "sigterm" else signal.SIGINT, rng)
    run.start()
    rc, err = run.finish()
    assert rc == 0 and "Traceback" not in err, err
    assert mid_save_leftovers >= 1, f"seed {seed}: no kill landed inside a save"
    _assert_same_final_state(ref, run, sources)
