"""Checkpoints: exact resume, and restoring onto a different mesh."""
import json

import jax
import numpy as np

from jaxlm.config import config_from_dict
from jaxlm.checkpoint import Checkpointer
from jaxlm.train.pretrain import pretrain
from jaxlm.train.trainer import stop_at


def lm_config(corpus, **train):
    return config_from_dict({
        "model": {"family": "gpt2", "num_layers": 2, "d_model": 32, "num_heads": 2, "max_len": 32},
        "data": {"train": f"text:{corpus}", "seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.1},
        "mesh": {"num_devices": 1},
        "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "log_every": 3,
                  "checkpoint_every": 5, "eval_batches": 2, **train},
    })


def _params(summary):
    return jax.tree.map(np.asarray, summary["state"].params)


def test_resume_after_kill_matches_uninterrupted_run(tiny_corpus, tmp_path):
    cfg = lm_config(tiny_corpus)
    full = pretrain(cfg, str(tmp_path / "full"), show_progress=False)
    # "kill" the second run right after its first checkpoint (step 5), then rerun the same command
    part = pretrain(cfg, str(tmp_path / "resumed"), show_progress=False, hooks=[stop_at(6)])
    assert part["step"] == 6
    resumed = pretrain(cfg, str(tmp_path / "resumed"), show_progress=False)
    assert resumed["resumed_from"] == 5 and resumed["step"] == 12
    assert resumed["train"]["loss"] == full["train"]["loss"]
    assert resumed["val"]["loss"] == full["val"]["loss"]
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         _params(full), _params(resumed)))
    assert max(diffs) == 0.0


def test_checkpoint_saved_on_8_devices_restores_on_1_and_back(tiny_corpus, tmp_path):
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import token_loss
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.fit import model_config
    from jaxlm.data.tokenizer import TextTokenizer

    cfg = lm_config(tiny_corpus, steps=5)
    cfg.mesh.num_devices, cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 8, 2, 2, 2
    cfg.train.batch_size = 8
    run = tmp_path / "run8"
    saved = pretrain(cfg, str(run), show_progress=False)
    ref = _params(saved)
    mcfg = model_config(cfg, TextTokenizer.load(run / "tokenizer.json"), None)
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)

    def restore_on(shape):
        from jaxlm.train.steps import compile_steps
        n = int(np.prod(shape))
        mesh = make_mesh(*shape, devices=jax.devices()[:n])
        with use_mesh(mesh):
            steps = compile_steps(lambda: build_model(mcfg), tx, token_loss, lr, mesh)
            ckpt = Checkpointer(run / "checkpoints")
            tree, data = ckpt.restore(None, steps.checkpoint_target())
            ckpt.close()
        state = steps.layout.from_checkpoint(tree)
        leaf = state.params["backbone"]["layers"][0]["mlp"]["up_proj"]["kernel"]
        return jax.tree.map(np.asarray, state.params), leaf, data

    one, leaf1, data = restore_on((1, 1, 1))
    assert len(leaf1.sharding.device_set) == 1
    assert data["iterator"] is not None
    eight, leaf8, _ = restore_on((2, 2, 2))
    assert len(leaf8.sharding.device_set) == 8
    for restored in (one, eight):
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), ref, restored))
        assert max(diffs) == 0.0


def test_a_resumed_or_rerun_run_keeps_its_wall_time_and_throughput(tmp_path):
    """Re-running a finished run only re-reports: its summary must not drop to 0 s and no tokens/s."""
    from jaxlm.run import Run
    write_summary = Run(tmp_path).write_summary
    write_summary({"step": 10, "wall_s": 30.0, "tokens_per_s": 500.0, "resumed_from": 0})
    write_summary({"step": 20, "wall_s": 12.0, "tokens_per_s": 480.0, "resumed_from": 10})
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["wall_s"] == 42.0 and s["tokens_per_s"] == 480.0
    write_summary({"step": 20, "wall_s": 0.5, "tokens_per_s": None, "resumed_from": 20})
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["wall_s"] == 42.5 and s["tokens_per_s"] == 480.0
