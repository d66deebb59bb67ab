"""Sharded training equals unsharded training; the mesh comes from config."""
import jax
import numpy as np
import pytest

from jaxlm.config import ModelConfig, OptimConfig
from jaxlm.errors import ConfigError
from jaxlm.models import build_model
from jaxlm.sharding import logical_to_spec, make_mesh, use_mesh
from jaxlm.tasks import token_loss
from jaxlm.train.optim import build_optimizer
from jaxlm.train.steps import compile_steps, put_batch


def _batch(B=8, T=16, V=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.integers(0, V, (B, T)).astype(np.int32),
            "targets": rng.integers(0, V, (B, T)).astype(np.int32),
            "weights": np.ones((B, T), np.float32)}


def _train(family: str, mesh_shape, n_steps=2, grad_accum=1):
    cfg = ModelConfig(family=family, vocab_size=64, num_layers=2, d_model=32, num_heads=4,
                      num_kv_heads=2 if family == "llama" else 0, max_len=32)
    tx, lr = build_optimizer(OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=1), 10)
    n = int(np.prod(mesh_shape))
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n])
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(cfg), tx, token_loss, lr, mesh,
                              grad_accum=grad_accum)
        state = steps.init()
        losses = []
        for i in range(n_steps):
            state, m = steps.train(state, put_batch(_batch(seed=i), steps.batch_sharding))
            losses.append(float(m["loss"]))
        leaf = state.params["backbone"]["layers"][0]["mlp"]["up_proj"]["kernel"]
        spec = leaf.get_value().sharding.spec if hasattr(leaf, "get_value") else leaf.sharding.spec
        return losses, jax.tree.map(np.asarray, state.params), spec


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_2x2x2_mesh_matches_one_device(family):
    losses1, params1, _ = _train(family, (1, 1, 1))
    losses8, params8, spec = _train(family, (2, 2, 2))
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # really sharded
    np.testing.assert_allclose(losses1, losses8, atol=1e-5)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params1, params8))
    assert max(diffs) <= 1e-5


def test_grad_accumulation_matches_one_big_batch():
    losses1, params1, _ = _train("gpt2", (1, 1, 1), grad_accum=1)
    losses4, params4, _ = _train("gpt2", (2, 1, 1), grad_accum=4)
    np.testing.assert_allclose(losses1, losses4, atol=1e-5)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params1, params4))
    assert max(diffs) <= 1e-5


def test_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8])
    rules = {"vocab": "tensor", "embed": "fsdp"}
    assert logical_to_spec(("vocab", "embed"), rules, (64, 32), mesh) == \
        jax.sharding.PartitionSpec("tensor", "fsdp")
    # a vocabulary of 65 cannot be split in two: replicated along that axis instead of failing
    assert logical_to_spec(("vocab", "embed"), rules, (65, 32), mesh) == \
        jax.sharding.PartitionSpec(None, "fsdp")


def test_mesh_minus_one_takes_the_rest():
    mesh = make_mesh(-1, 2, 1, devices=jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_mesh_that_does_not_divide_devices_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not divide the 8 available devices"):
        make_mesh(-1, 3, 1, devices=jax.devices()[:8])
    with pytest.raises(ConfigError, match="does not match the 8 available devices"):
        make_mesh(2, 2, 1, devices=jax.devices()[:8])


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_bfloat16_parameters_train_and_keep_their_dtypes(grad_accum):
    """param_dtype bfloat16: parameters and AdamW moments stay bfloat16 step after step (a float32
    loss weight must not promote the gradients), and the loss goes down."""
    cfg = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, max_len=32,
                      dtype="bfloat16", param_dtype="bfloat16")
    tx, lr = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
    mesh = make_mesh(1, devices=jax.devices()[:1])
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(cfg), tx, token_loss, lr, mesh,
                              grad_accum=grad_accum)
        state = steps.init()
        batch = put_batch(_batch(), steps.batch_sharding)
        losses = []
        for _ in range(8):
            state, m = steps.train(state, batch)
            losses.append(float(m["loss"]))
    dtypes = {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state))
              if getattr(x, "ndim", 0) >= 1}
    assert dtypes == {"bfloat16"}, dtypes
    assert int(m["nonfinite_steps"]) == 0 and losses[-1] < losses[0] - 0.5, losses
