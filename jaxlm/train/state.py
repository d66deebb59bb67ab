"""The train state: a typed pytree of plain arrays, and its layout in checkpoints.

Across steps the state holds parameters and optimizer state as plain nested dicts of arrays, not
nnx Variables: jit flattens dicts in C++, while each Variable costs a Python flatten and unflatten
on every call, which made the dispatch of one step cost several milliseconds of host time
(`benchmarks/step_dispatch.py` prints both). Checkpoints keep the nnx layout that jaxlm 0.1.0
wrote (`{"params": nnx.State, "opt_state", "step", "rng", "nonfinite": {...}}`), so older run
directories resume unchanged; `StateLayout` converts between the two by their leaves, which both
layouts list in the same (sorted-key) order, checked leaf by leaf when the layout is built.

A parameter-efficient run (LoRA) trains a part of the parameters only (`trainable`, an nnx
filter): gradients and optimizer state exist for that part alone, and its checkpoints hold only
that part; the rest (the frozen base) stays in the state's `params` unchanged and is stored once
per run (`jaxlm.train.frozen`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict


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


def new_state(params: Any, tx: optax.GradientTransformation, seed: int,
              trained: Callable[[Any], Any] = lambda p: p) -> TrainState:
    """A fresh state for `params` (a plain dict of arrays); optimizer state for `trained(params)`
    (the part that is trained: all by default)."""
    return TrainState(params=params, opt_state=tx.init(trained(params)),
                      step=jnp.zeros((), jnp.int32),
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
    nnx: dict[str, Any]  # abstract, checkpoint layout (its params: the trained ones)
    trained: frozenset | None = None  # paths of the trained parameters (None: all of them)
    frozen: nnx.State | None = None  # abstract nnx layout of the others (the frozen base)

    @classmethod
    def of(cls, make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
           trainable: Any = None) -> "StateLayout":
        """The layout of `make_model()`'s parameters trained with `tx` (abstract: no memory);
        `trainable` (an nnx filter, e.g. `jaxlm.models.lora.trainable`) limits what trains."""
        with nnx.use_eager_sharding(False), jax.sharding.use_abstract_mesh(
                jax.sharding.AbstractMesh((), ())):  # Flax's names are not mesh axes
            abstract_model = nnx.eval_shape(make_model)
        graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
        kept, trained, frozen = abstract_params, None, None
        if trainable is not None:
            kept = nnx.filter_state(abstract_params, trainable)
            frozen = nnx.filter_state(abstract_params, nnx.Not(trainable))
            trained = frozenset(tuple(p) for p, _ in nnx.to_flat_state(kept))
        part = cls(graphdef, abstract_params, None, None, trained, frozen)
        plain = jax.eval_shape(lambda: new_state(nnx.to_pure_dict(abstract_params), tx, 0,
                                                 lambda p: part.split(p)[0]))
        nnx_tree = jax.eval_shape(lambda: checkpoint_dict(new_state(kept, tx, 0)))
        layout = dataclasses.replace(part, plain=plain, nnx=nnx_tree)
        la = jax.tree.leaves((layout.split(plain.params)[0], plain.opt_state))
        lb = jax.tree.leaves((nnx_tree["params"], nnx_tree["opt_state"]))
        if len(la) != len(lb) or any(x.shape != y.shape or x.dtype != y.dtype
                                     for x, y in zip(la, lb)):
            raise ValueError("the plain and nnx layouts of the train state list their arrays in "
                             "different orders; jaxlm cannot checkpoint this model")
        return layout

    def split(self, params: Any) -> tuple[Any, Any]:
        """(trained, frozen) parts of plain parameters (frozen: {} when everything trains)."""
        if self.trained is None:
            return params, {}
        flat = flatten_dict(params)
        return (unflatten_dict({p: v for p, v in flat.items() if p in self.trained}),
                unflatten_dict({p: v for p, v in flat.items() if p not in self.trained}))

    def join(self, trained: Any, frozen: Any) -> Any:
        """Plain parameters from their trained and frozen parts (inverse of `split`)."""
        if self.trained is None:
            return trained
        return unflatten_dict({**flatten_dict(frozen), **flatten_dict(trained)})

    def frozen_params(self, params: Any) -> nnx.State:
        """The frozen part of plain parameters in the nnx layout (what `jaxlm.train.frozen`
        stores)."""
        return _relayout(self.split(params)[1], self.frozen)

    def plain_frozen(self, tree: nnx.State) -> Any:
        """The frozen part in the nnx layout (restored) -> plain (inverse of `frozen_params`)."""
        return _relayout(tree, self.split(self.plain.params)[1])

    def checkpoint_params(self, params: Any) -> Any:
        """The checkpointed (trained) part of plain parameters, in the nnx layout."""
        return _relayout(self.split(params)[0], self.nnx["params"])

    def params_from_checkpoint(self, tree: Any, frozen: Any = None) -> Any:
        """Plain parameters from checkpointed ones and the frozen part (plain; needed exactly
        when only a part trains)."""
        if (self.trained is None) != (frozen is None):
            raise ValueError("the frozen parameters are needed exactly when only a part trains")
        return self.join(_relayout(tree, self.split(self.plain.params)[0]), frozen)

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
            params=self.checkpoint_params(state.params),
            opt_state=_relayout(state.opt_state, self.nnx["opt_state"])))

    def from_checkpoint(self, tree: dict[str, Any], frozen: Any = None) -> TrainState:
        """A checkpoint-layout tree (restored state, or its shardings) as a TrainState; `frozen`:
        the plain frozen parameters (or their shardings) when only a part trains."""
        return TrainState(params=self.params_from_checkpoint(tree["params"], frozen),
                          opt_state=_relayout(tree["opt_state"], self.plain.opt_state),
                          step=tree["step"], rng=tree["rng"],
                          nonfinite_count=tree["nonfinite"]["count"],
                          nonfinite_last_step=tree["nonfinite"]["last_step"])
