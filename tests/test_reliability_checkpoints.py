"""Damaged checkpoints are detected, reported, moved aside and skipped, never silently loaded."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm.errors import CheckpointError
from jaxlm.checkpoint import (MANIFEST, Checkpointer, abstract_with_shardings,
                                    check_step_dir, latest_intact)

DEV = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(step: int) -> dict:
    return {"params": {"w": jnp.arange(256.0).reshape(16, 16) + step},
            "step": jnp.asarray(step, jnp.int32),
            "nonfinite": {"count": jnp.zeros((), jnp.int32),
                          "last_step": jnp.full((), -1, jnp.int32)}}


def _target() -> dict:
    abstract = jax.eval_shape(lambda: _state(0))
    return abstract_with_shardings(abstract, jax.tree.map(lambda _: DEV, abstract))


def _saved(tmp_path, steps=(1, 2, 3), **kw) -> Checkpointer:
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=5, **kw)
    for s in steps:
        ckpt.save(s, _state(s), {"iterator": {"pos": s}})
    ckpt.close()
    return Checkpointer(tmp_path / "checkpoints", keep=5)


def _array_files(step_dir):
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file()
                  and p.parent.name == "d")


def _flip_byte(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x5A
    path.write_bytes(bytes(b))


def _damage_all_array_files(step_dir):
    for f in _array_files(step_dir):
        _flip_byte(f)


def test_saves_are_sealed_sync_and_async(tmp_path):
    for mode in (True, False):
        d = tmp_path / str(mode)
        ckpt = Checkpointer(d, async_save=mode)
        ckpt.save(7, _state(7))
        ckpt.close()
        assert check_step_dir(d / "7") == (True, "")
        files = json.loads((d / "7" / MANIFEST).read_text())["files"]
        assert any(k.startswith("state/") for k in files) and any(k.startswith("data/") for k in files)


@pytest.mark.parametrize("damage", ["flipped byte", "missing file", "truncated file",
                                    "unreadable manifest"])
def test_damaged_latest_is_reported_moved_aside_and_skipped(damage, tmp_path, capsys):
    ckpt = _saved(tmp_path)
    step3 = tmp_path / "checkpoints" / "3"
    ckpt.close()
    if damage == "flipped byte":
        # orbax alone restores this silently with wrong numbers; the manifest catches it
        _damage_all_array_files(step3)
    elif damage == "missing file":
        _array_files(step3)[0].unlink()
    elif damage == "truncated file":
        f = _array_files(step3)[0]
        f.write_bytes(f.read_bytes()[:10])
    else:
        (step3 / MANIFEST).write_text("{not json")
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=5)
    state, data, step = ckpt.restore_latest(_target())
    err = capsys.readouterr().err
    assert step == 2 and data == {"iterator": {"pos": 2}}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]),
                                  np.arange(256.0).reshape(16, 16) + 2)
    assert "step 3" in err and "damaged" in err and "checkpoints.corrupt" in err
    assert not step3.exists() and (tmp_path / "checkpoints.corrupt" / "3").is_dir()  # not deleted
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, _state(3))  # training goes on and saves that step again
    ckpt.close()
    assert check_step_dir(step3)[0] is True


def test_leftover_tmp_dir_of_a_killed_save_is_moved_aside(tmp_path, capsys):
    _saved(tmp_path, (1, 2)).close()
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "2", ckpts / "3.orbax-checkpoint-tmp")  # as a kill -9 leaves it
    (ckpts / "3.orbax-checkpoint-tmp" / MANIFEST).unlink()
    ckpt = Checkpointer(ckpts, keep=5)
    assert "unfinished checkpoint" in capsys.readouterr().err
    assert (tmp_path / "checkpoints.corrupt" / "3.orbax-checkpoint-tmp").is_dir()
    assert ckpt.restore_latest(_target())[2] == 2
    ckpt.save(3, _state(3))
    ckpt.close()
    assert check_step_dir(ckpts / "3")[0] is True


def test_explicit_damaged_step_is_an_error_naming_it(tmp_path):
    ckpt = _saved(tmp_path)
    _damage_all_array_files(tmp_path / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match=r"step 2 .*damaged"):
        ckpt.restore(2, _target())
    ckpt.close()


def test_all_damaged_is_an_error_not_a_silent_restart(tmp_path):
    ckpt = _saved(tmp_path, (1, 2))
    for s in (1, 2):
        _damage_all_array_files(tmp_path / "checkpoints" / str(s))
    with pytest.raises(CheckpointError, match="No intact checkpoint"):
        ckpt.restore_latest(_target())
    ckpt.close()
    # both set aside: rerunning starts again from step 0 instead of failing forever
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == []


def test_read_only_users_skip_without_moving(tmp_path, capsys):
    _saved(tmp_path).close()
    _damage_all_array_files(tmp_path / "checkpoints" / "3")
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert latest_intact(tmp_path / "checkpoints", [1, 2, 3]) == 2
    assert "step 3" in capsys.readouterr().err
    ro = Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert ro.restore_latest(_target())[2] == 2
    ro.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert not (tmp_path / "checkpoints.corrupt").exists()


def test_unsealed_checkpoints_still_load_and_unreadable_ones_are_skipped(tmp_path, capsys):
    ckpt = _saved(tmp_path)
    ckpt.close()
    for s in (1, 2, 3):  # as written by an older jaxlm: no manifest
        (tmp_path / "checkpoints" / str(s) / MANIFEST).unlink()
    shutil.rmtree(tmp_path / "checkpoints" / "3" / "state")
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=5)
    state, _, step = ckpt.restore_latest(_target())
    assert step == 2 and int(state["step"]) == 2
    assert "step 3" in capsys.readouterr().err
    ckpt.close()


def test_checkpoint_without_nonfinite_counters_restores_with_zeros(tmp_path):
    old = {k: v for k, v in _state(5).items() if k != "nonfinite"}  # saved before this feature
    mgr = ocp.CheckpointManager((tmp_path / "checkpoints").absolute(),
                                options=ocp.CheckpointManagerOptions(create=True),
                                item_names=("state", "data"))
    mgr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                        data=ocp.args.JsonSave({})))
    mgr.wait_until_finished()
    mgr.close()
    state, _, step = Checkpointer(tmp_path / "checkpoints").restore_latest(_target())
    assert step == 5 and int(state["nonfinite"]["count"]) == 0
    assert int(state["nonfinite"]["last_step"]) == -1


def test_pretrain_resumes_from_the_previous_checkpoint_when_the_latest_is_damaged(
        tiny_corpus, tmp_path, capsys):
    from jaxlm.config import config_from_dict
    from jaxlm.run import Run
    from jaxlm.train.pretrain import pretrain

    raw = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2,
                     "max_len": 32},
           "data": {"train": f"text:{tiny_corpus}", "seq_len": 32}, "mesh": {"num_devices": 1},
           "train": {"steps": 8, "batch_size": 4, "eval_every": 0, "log_every": 4,
                     "checkpoint_every": 4}}
    run = tmp_path / "run"
    pretrain(config_from_dict(raw), str(run), show_progress=False)
    _damage_all_array_files(run / "checkpoints" / "8")
    # read-only loading (evaluate, export, generate, init_from) skips it without moving it
    _, which = Run(run).read_params("latest")
    assert which == "step 4" and (run / "checkpoints" / "8").is_dir()
    with pytest.raises(CheckpointError, match="step 8"):
        Run(run).read_params(8)
    capsys.readouterr()
    raw["train"]["steps"] = 12
    summary = pretrain(config_from_dict(raw), str(run), show_progress=False)
    assert summary["resumed_from"] == 4 and summary["step"] == 12
    assert "step 8" in capsys.readouterr().err
    assert (run / "checkpoints.corrupt" / "8").is_dir()



def test_metrics_survive_a_torn_last_line(tmp_path):
    from jaxlm.run import Run
    from jaxlm.train.logger import MetricsLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "split": "train", "loss": 2.0}\n'
                                            '{"step": 6, "split": "tr')  # killed mid-write
    logger = MetricsLogger(tmp_path, resumed_from=4)
    logger.log(5, "train", {"loss": 1.5})
    logger.close()
    assert [(r["step"], r["loss"]) for r in Run(tmp_path).metric_records()] == [(4, 2.0), (5, 1.5)]
