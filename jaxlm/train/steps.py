"""Pure train and eval steps, jitted with explicit shardings over a mesh.

The train state is a plain dict pytree: {"params": nnx.State, "opt_state": optax state,
"step": int32 scalar, "rng": uint32 key data, "nonfinite": {"count", "last_step"} int32 scalars}.
The model's structure (an nnx GraphDef) is static.

An update whose loss or gradients hold NaN/Inf is not applied (parameters and optimizer state stay
as they were); the step still counts, and `nonfinite` records how many such steps there were and
the last one. The check is inside the jitted step, so it costs no host sync: the loop reads the
counter when it reads the metrics anyway (`train.on_nonfinite` says whether it then stops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxlm.sharding import batch_sharding, replicated, state_shardings
from jaxlm.tasks import LossFn

State = dict[str, Any]


def _split_micro(batch: dict, n: int) -> dict:
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def train_step(state: State, batch: dict, *, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               loss_fn: LossFn, lr_schedule: optax.Schedule, grad_accum: int = 1,
               dropout: bool = False, guard_nonfinite: bool = True
               ) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer update on `batch` (split into `grad_accum` micro-batches).

    guard_nonfinite=False drops the NaN/Inf check (benchmarks/nonfinite_guard_overhead.py only).
    """
    params = state["params"]
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

    def loss_sum(p, micro, key):
        loss, aux = loss_fn(nnx.merge(graphdef, p), micro, key if dropout else None)
        return loss, aux

    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
    if grad_accum == 1:
        (total, aux), grads = grad_fn(params, batch, step_key)
    else:
        micro = _split_micro(batch, grad_accum)

        def body(carry, xs):
            g_acc, l_acc, a_acc = carry
            mb, i = xs
            (l, a), g = grad_fn(params, mb, jax.random.fold_in(step_key, i))
            return (jax.tree.map(lambda acc, gi: acc + gi.astype(acc.dtype), g_acc, g), l_acc + l,
                    jax.tree.map(jnp.add, a_acc, a)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)  # f32 sums
        aux0 = {"weight": jnp.zeros(()), "correct": jnp.zeros(())}
        (grads, total, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), aux0),
                                              (micro, jnp.arange(grad_accum)))
    weight = jnp.maximum(aux["weight"], 1.0)
    # in each parameter's dtype: the float32 weight (and float32 micro-batch sums) would otherwise
    # promote bfloat16 gradients, and with them the optimizer moments, after one step
    grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, params)
    grad_norm = optax.tree.norm(grads)

    def update(ops):
        p, opt, g = ops
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    # A NaN/Inf loss or gradient skips the update. lax.cond, not jnp.where on the results: the
    # update still runs in place, where selects cost ~1.5x on an optimizer-bound step
    # (benchmarks/nonfinite_guard_overhead.py). Not optax.apply_if_finite: that checks gradients
    # only, force-applies after a run of bad steps and moves its counters into the optimizer state.
    finite = (jnp.isfinite(total) & jnp.isfinite(grad_norm)) if guard_nonfinite else jnp.bool_(True)
    ops = (params, state["opt_state"], grads)
    new_params, opt_state = (jax.lax.cond(finite, update, lambda ops: ops[:2], ops)
                             if guard_nonfinite else update(ops))
    bad = state["nonfinite"]
    nonfinite = {"count": bad["count"] + jnp.where(finite, 0, 1).astype(jnp.int32),
                 "last_step": jnp.where(finite, bad["last_step"], state["step"] + 1)}
    new_state = {**state, "params": new_params, "opt_state": opt_state,
                 "step": state["step"] + 1, "nonfinite": nonfinite}
    metrics = {"loss": total / weight, "accuracy": aux["correct"] / weight,
               "grad_norm": grad_norm, "lr": lr_schedule(state["step"]),
               "weight": aux["weight"], "nonfinite_steps": nonfinite["count"],
               "nonfinite_last_step": nonfinite["last_step"]}
    return new_state, metrics


def eval_step(params: Any, batch: dict, *, graphdef: nnx.GraphDef, loss_fn: LossFn
              ) -> dict[str, jax.Array]:
    """Sums (not means) so that batches can be added up exactly."""
    loss, aux = loss_fn(nnx.merge(graphdef, params), batch, None)
    return {"loss_sum": loss, **aux}


def train_compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """XLA options for the train step. On CPU, optimization barriers are kept through fusion so
    that the residual stream's gradient is stored once per layer instead of being recomputed in
    every consumer (see `jaxlm.models.layers.materialize_grad`): ~1.2x on a 6-layer GPT step."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}


@dataclass
class CompiledSteps:
    """The jitted steps for one model, optimizer and mesh, and the shardings they use."""

    train: Callable[[State, dict], tuple[State, dict]]
    eval: Callable[[Any, dict], dict]
    init: Callable[[], State]
    state_sharding: Any
    batch_sharding: NamedSharding
    abstract_state: Any


def compile_steps(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                  loss_fn: LossFn, lr_schedule: optax.Schedule, mesh: Mesh, *, seed: int = 0,
                  grad_accum: int = 1, dropout: bool = False,
                  rules: dict[str, Any] | None = None) -> CompiledSteps:
    """Build sharded init/train/eval functions. `make_model` builds a fresh (unsharded) model."""
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(make_model)
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)

    def init() -> State:
        params = nnx.state(make_model(), nnx.Param)
        return {"params": params, "opt_state": tx.init(params),
                "step": jnp.zeros((), jnp.int32),
                "rng": jax.random.key_data(jax.random.key(seed)),
                "nonfinite": {"count": jnp.zeros((), jnp.int32),
                              "last_step": jnp.full((), -1, jnp.int32)}}

    abstract_state = jax.eval_shape(init)
    shardings = state_shardings(abstract_state, mesh, rules)
    # Variables in the sharding tree are unwrapped to plain NamedShardings for jit; those holding
    # no array (optax.MaskedNode for a frozen parameter) stay as they are, to match the state.
    shardings = jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) and jax.tree.leaves(v) else v,
        shardings, is_leaf=lambda v: isinstance(v, nnx.Variable))
    in_batch = batch_sharding(mesh, 2, rules)
    # Every leaf of a batch has a leading batch axis; rank differs (labels [B] vs tokens [B, T]),
    # so the batch sharding is a prefix spec that jit broadcasts over each leaf.
    batch_prefix = NamedSharding(mesh, jax.sharding.PartitionSpec(in_batch.spec[0]))
    rep = replicated(mesh)

    train = jax.jit(
        lambda s, b: train_step(s, b, graphdef=graphdef, tx=tx, loss_fn=loss_fn,
                                lr_schedule=lr_schedule, grad_accum=grad_accum, dropout=dropout),
        in_shardings=(shardings, batch_prefix), out_shardings=(shardings, rep),
        donate_argnums=(0,), compiler_options=train_compiler_options(mesh))
    evaluate = jax.jit(lambda p, b: eval_step(p, b, graphdef=graphdef, loss_fn=loss_fn),
                       in_shardings=(shardings["params"], batch_prefix), out_shardings=rep)
    init_sharded = jax.jit(init, out_shardings=shardings)
    return CompiledSteps(train=train, eval=evaluate, init=init_sharded, state_sharding=shardings,
                         batch_sharding=batch_prefix, abstract_state=abstract_state)


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch -> global jax arrays sharded along the batch axis."""
    return {k: jax.make_array_from_process_local_data(
        NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
            sharding.spec[0], *([None] * (v.ndim - 1)))), v) for k, v in batch.items()}
