"""The train state: a typed pytree of plain arrays, and its layout in checkpoints.

Across steps the state holds parameters and optimizer state as plain nested dicts of arrays, not
nnx Variables: jit flattens dicts in C++, while each Variable costs a Python flatten and unflatten
on every call, which made the dispatch of one step cost several milliseconds of host time
(`benchmarks/step_dispatch.py` prints both). Checkpoints keep the nnx layout that jaxlm 0.1.0
wrote (`{"params": nnx.State, "opt_state", "step", "rng", "nonfinite": {...}}`), so older run
directories resume unchanged; `StateLayout` converts between the two by their leaves, which both
layouts list in the same (sorted-key) order, checked leaf by leaf when the layout is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """Parameters, optimizer state, step, RNG key data and the non-finite update counters."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    nonfinite_count: jax.Array
    nonfinite_last_step: jax.Array

    def replace(self, **changes: Any) -> "TrainState":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def new_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state for `params` (a plain dict of arrays)."""
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)),
                      nonfinite_count=jnp.zeros((), jnp.int32),
                      nonfinite_last_step=jnp.full((), -1, jnp.int32))


def checkpoint_dict(s: TrainState) -> dict[str, Any]:
    """The fields in the checkpoint layout (same leaves)."""
    return {"params": s.params, "opt_state": s.opt_state, "step": s.step, "rng": s.rng,
            "nonfinite": {"count": s.nonfinite_count, "last_step": s.nonfinite_last_step}}


def _relayout(tree: Any, like: Any) -> Any:
    """`tree`'s leaves in the structure of `like` (same leaves, same order)."""
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(tree))


@dataclass(frozen=True)
class StateLayout:
    """The model's static structure, and the map between the plain train state and the nnx
    layout that checkpoints (and `nnx.merge`) use. Within the parameters and within the
    optimizer state both layouts list their arrays in the same (sorted-key) order."""

    graphdef: nnx.GraphDef
    abstract_params: nnx.State  # the nnx parameter state, ShapeDtypeStructs with their metadata
    plain: TrainState  # abstract, plain layout
    nnx: dict[str, Any]  # abstract, checkpoint layout

    @classmethod
    def of(cls, make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation
           ) -> "StateLayout":
        """The layout of `make_model()`'s parameters trained with `tx` (abstract: no memory)."""
        with nnx.use_eager_sharding(False), jax.sharding.use_abstract_mesh(
                jax.sharding.AbstractMesh((), ())):  # Flax's names are not mesh axes
            abstract_model = nnx.eval_shape(make_model)
        graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
        plain = jax.eval_shape(lambda: new_state(nnx.to_pure_dict(abstract_params), tx, 0))
        nnx_tree = jax.eval_shape(lambda: checkpoint_dict(new_state(abstract_params, tx, 0)))
        layout = cls(graphdef, abstract_params, plain, nnx_tree)
        la, lb = jax.tree.leaves(plain), jax.tree.leaves(layout.from_checkpoint(nnx_tree))
        if len(la) != len(lb) or any(x.shape != y.shape or x.dtype != y.dtype
                                     for x, y in zip(la, lb)):
            raise ValueError("the plain and nnx layouts of the train state list their arrays in "
                             "different orders; jaxlm cannot checkpoint this model")
        return layout

    def nnx_params(self, params: Any) -> nnx.State:
        """Plain parameters -> nnx State (cheap: the same leaves)."""
        return _relayout(params, self.abstract_params)

    def plain_params(self, params: nnx.State) -> dict:
        """nnx State -> plain parameters (e.g. the kept best checkpoint's)."""
        return _relayout(params, self.plain.params)

    def model(self, params: Any) -> nnx.Module:
        """The module holding `params` (plain dict or nnx State); used inside jitted functions."""
        if not isinstance(params, nnx.State):
            params = self.nnx_params(params)
        return nnx.merge(self.graphdef, params)

    def to_checkpoint(self, state: TrainState) -> dict[str, Any]:
        """The state in the checkpoint layout (0.1.0's)."""
        return checkpoint_dict(state.replace(
            params=_relayout(state.params, self.nnx["params"]),
            opt_state=_relayout(state.opt_state, self.nnx["opt_state"])))

    def from_checkpoint(self, tree: dict[str, Any]) -> TrainState:
        """A checkpoint-layout tree (restored state, or its shardings) as a TrainState."""
        return TrainState(params=_relayout(tree["params"], self.plain.params),
                          opt_state=_relayout(tree["opt_state"], self.plain.opt_state),
                          step=tree["step"], rng=tree["rng"],
                          nonfinite_count=tree["nonfinite"]["count"],
                          nonfinite_last_step=tree["nonfinite"]["last_step"])
