"""Parameters annotated the standard Flax way (`nnx.with_partitioning`) are sharded as annotated,
through jaxlm's rules table (logical names) or directly (mesh axis names); unknown names are
refused with a clear error. 8 fake CPU devices (tests/conftest.py)."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxlm.errors import ConfigError
from jaxlm.sharding import make_mesh, state_shardings, use_mesh


class Custom(nnx.Module):
    def __init__(self, names, rngs: nnx.Rngs, **meta):
        init = nnx.initializers.normal(0.02)
        self.up = nnx.Linear(16, 32, rngs=rngs,
                             kernel_init=nnx.with_partitioning(init, names, **meta),
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros, names[1:]))
        self.plain = nnx.Linear(32, 16, rngs=rngs)  # no annotation: replicated

    def __call__(self, x):
        return self.plain(jax.nn.relu(self.up(x)))


def _specs(names, rules=None, **meta):
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    with nnx.use_eager_sharding(False):
        model = Custom(names, nnx.Rngs(0), **meta)
    state = nnx.state(model, nnx.Param)
    shardings = state_shardings(state, mesh, rules)
    placed = jax.device_put(state, shardings)
    return {k: placed[k]["kernel"].get_value().sharding.spec for k in ("up", "plain")}, placed


def test_flax_logical_names_go_through_the_rules_table():
    specs, placed = _specs(("embed", "mlp"))  # embed -> fsdp, mlp -> tensor
    assert specs == {"up": P("fsdp", "tensor"), "plain": P()}
    assert placed["up"]["bias"].get_value().sharding.spec == P("tensor")
    assert placed["up"]["kernel"].get_value().addressable_shards[0].data.shape == (8, 16)


def test_flax_mesh_axis_names_are_used_directly_and_rules_can_map_new_names():
    assert _specs(("data", ("fsdp", "tensor")))[0]["up"] == P("data", ("fsdp", "tensor"))
    assert _specs(("rows", "cols"), rules={"rows": None, "cols": "tensor"})[0]["up"] == P(
        None, "tensor")
    # Flax's own per-variable rules (sharding_rules metadata) also apply
    assert _specs(("rows", "mlp"), sharding_rules=(("rows", "data"),))[0]["up"] == P(
        "data", "tensor")


def test_unknown_axis_name_is_refused_naming_the_parameter():
    with pytest.raises(ConfigError, match="'up/kernel' is annotated with axis name 'embd'.*"
                       "mesh.rules"):
        _specs(("embd", "mlp"))


def test_a_jitted_step_keeps_the_annotated_sharding():
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    with nnx.use_eager_sharding(False):
        model = Custom(("embed", "mlp"), nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    with use_mesh(mesh):
        state = jax.device_put(state, shardings)

        @jax.jit
        def step(state, x):
            grads = jax.grad(lambda s: nnx.merge(graphdef, s)(x).sum())(state)
            return jax.tree.map(lambda p, g: p - 0.1 * g, state, grads)

        new = jax.jit(step, out_shardings=shardings)(state, jnp.ones((8, 16)))
    assert new["up"]["kernel"].get_value().sharding.spec == P("fsdp", "tensor")
