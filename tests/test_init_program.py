"""The init programs are compiled with cheaper XLA options on CPU (`init_compiler_options`):
the fresh state (parameters, head, optimizer state) must be the same bits as the default compile
gives, for pretraining's init and for fine-tuning's, which copies a pretrained backbone in."""
import jax
import numpy as np
import pytest

import jaxlm.train.steps as steps_mod
from jaxlm.config import ModelConfig, OptimConfig
from jaxlm.models import build_model
from jaxlm.sharding import make_mesh, use_mesh
from jaxlm.tasks import token_loss
from jaxlm.train.optim import build_optimizer


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _fresh(family: str, task: str, options) -> tuple[list, list]:
    """(init's state, init_replacing's state from zeros for a classifier) under `options`."""
    mcfg = ModelConfig(family=family, vocab_size=40, num_layers=2, d_model=32, num_heads=4,
                       max_len=16).resolved()
    tx, lr = build_optimizer(OptimConfig(lr=1e-3), 10)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    original = steps_mod.init_compiler_options
    steps_mod.init_compiler_options = options
    try:
        with use_mesh(mesh):
            steps = steps_mod.compile_steps(lambda: build_model(mcfg, task, num_labels=3), tx, token_loss, lr,
                                            mesh, seed=3)
            state = steps.init()
            replaced = None
            if task == "classification":  # fine-tuning's init, a backbone copied in
                zero = jax.tree.map(np.zeros_like, jax.device_get(state.params))
                replaced = steps.init_replacing(lambda fresh, given: given)(zero)
    finally:
        steps_mod.init_compiler_options = original
    return _leaves(state), _leaves(replaced)


@pytest.mark.parametrize("family,task", [("gpt2", "causal"), ("bert", "classification")])
def test_the_cheaper_init_compile_gives_the_same_bits(family, task):
    assert steps_mod.init_compiler_options(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    cheap, cheap_replaced = _fresh(family, task, steps_mod.init_compiler_options)
    default, default_replaced = _fresh(family, task, lambda mesh: None)
    assert len(cheap) == len(default) > 4
    for a, b in zip(cheap + cheap_replaced, default + default_replaced):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert any(np.abs(a).sum() > 0 for a in cheap)  # a real random initialisation
