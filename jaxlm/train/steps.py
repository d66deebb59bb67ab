"""Pure train and eval steps, jitted with explicit shardings over a mesh.

`train_step` is one optimizer update: gradients (accumulated over micro-batches by
`accumulate_gradients`), then the update, which `apply_if_finite` skips when the loss or the
gradients hold NaN/Inf. A skipped update still counts as a step; the state records how many were
skipped and the last one. The check is inside the jitted step, so it costs no host sync: the loop
reads the counter with the metrics (`train.on_nonfinite` says whether it then stops).

`many_steps` runs up to K train steps in one compiled call (`train.steps_per_call`), a loop on the
device over K stacked batches: the host's work per step (moving the batch, dispatching the
program, the loop's hooks) is paid once per call, where on a small model it competes with the
step for the same CPU cores (benchmarks/steps_per_call.py prints the difference).

When only a part of the parameters trains (LoRA: `StateLayout.trained`), gradients are taken
with respect to that part alone and the optimizer sees only it; the frozen rest passes through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.evaluation import Evaluator
from jaxlm.models.lora import adapter_dropout
from jaxlm.checkpoint import abstract_with_shardings
from jaxlm.sharding import named_shardings, put_batch, replicated, rows_sharding
from jaxlm.tasks.losses import LossFn
from jaxlm.train.state import StateLayout, TrainState, new_state

__all__ = ["TrainState", "train_step", "accumulate_gradients", "mean_gradients", "step_metrics",
           "apply_if_finite", "many_steps", "compile_steps", "CompiledSteps", "put_batch"]

# (params, micro-batch, rng key) -> (loss sum, aux sums); see jaxlm.tasks.losses
ParamsLoss = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def accumulate_gradients(loss_of: ParamsLoss, params: Any, batch: dict, key: jax.Array,
                         micro_batches: int) -> tuple[jax.Array, dict, Any]:
    """(loss sum, aux sums, gradient sums) over `batch` split into `micro_batches` rows-wise
    slices; float32 sums, a `lax.scan` so memory holds one micro-batch's activations."""
    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    if micro_batches == 1:
        (loss, aux), grads = grad_fn(params, batch, key)
        return loss, aux, grads
    micro = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    _, aux_shape = jax.eval_shape(loss_of, params, first, key)  # a custom loss's own aux keys

    def body(carry, xs):
        (l, a), g = grad_fn(params, xs[0], jax.random.fold_in(key, xs[1]))
        return jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), carry, (l, a, g)), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                         (jax.ShapeDtypeStruct((), jnp.float32), aux_shape, params))
    (loss, aux, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(micro_batches)))
    return loss, aux, grads


def apply_if_finite(finite: jax.Array, tx: optax.GradientTransformation, params: Any,
                    opt_state: Any, grads: Any) -> tuple[Any, Any]:
    """The optimizer update when `finite`, else parameters and optimizer state unchanged.

    lax.cond, not jnp.where on the results: the update still runs in place, where selects cost
    more on an optimizer-bound step (benchmarks/nonfinite_guard_overhead.py). Not
    optax.apply_if_finite: that checks gradients only, force-applies after a run of bad steps and
    moves its counters into the optimizer state.
    """
    def update(ops):
        p, opt, g = ops
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    return jax.lax.cond(finite, update, lambda ops: ops[:2], (params, opt_state, grads))


def mean_gradients(state: TrainState, batch: dict, *, layout: StateLayout, loss_fn: LossFn,
                   grad_accum: int = 1, dropout: bool = False
                   ) -> tuple[jax.Array, dict[str, jax.Array], Any, jax.Array]:
    """(loss sum, aux sums, gradients of the mean loss per scored target, total weight); the
    gradients are those of the trained parameters (`layout.split`) only."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    trained, frozen = layout.split(state.params)

    def loss_of(params, micro, k):
        k = k if dropout else None
        with adapter_dropout(k):
            return loss_fn(layout.model(layout.join(params, frozen)), micro, k)

    total, aux, grads = accumulate_gradients(loss_of, trained, batch, key, grad_accum)
    weight = jnp.maximum(aux["weight"], 1.0)
    # in each parameter's dtype: the float32 weight (and float32 micro-batch sums) would otherwise
    # promote bfloat16 gradients, and with them the optimizer moments, after one step
    grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, trained)
    return total, aux, grads, weight


def step_metrics(new: TrainState, total: jax.Array, aux: dict, weight: jax.Array,
                 grad_norm: jax.Array, lr: jax.Array) -> dict[str, jax.Array]:
    """A step's metrics: the loss and every aux sum as means per scored target (see LossFn)."""
    means = {k: v / weight for k, v in aux.items() if k != "weight"}
    return {"loss": total / weight, **means, "grad_norm": grad_norm, "lr": lr,
            "weight": aux["weight"], "nonfinite_steps": new.nonfinite_count,
            "nonfinite_last_step": new.nonfinite_last_step}


def train_step(state: TrainState, batch: dict, *, layout: StateLayout,
               tx: optax.GradientTransformation, loss_fn: LossFn, lr_schedule: optax.Schedule,
               grad_accum: int = 1, dropout: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch`, skipped (but counted) when anything is NaN/Inf."""
    total, aux, grads, weight = mean_gradients(state, batch, layout=layout, loss_fn=loss_fn,
                                               grad_accum=grad_accum, dropout=dropout)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    trained, frozen = layout.split(state.params)
    trained, opt_state = apply_if_finite(finite, tx, trained, state.opt_state, grads)
    new = state.replace(
        params=layout.join(trained, frozen), opt_state=opt_state, step=state.step + 1,
        nonfinite_count=state.nonfinite_count + jnp.where(finite, 0, 1).astype(jnp.int32),
        nonfinite_last_step=jnp.where(finite, state.nonfinite_last_step, state.step + 1))
    return new, step_metrics(new, total, aux, weight, grad_norm, lr_schedule(state.step))


def many_steps(step: Callable[[TrainState, dict], tuple[TrainState, dict]], state: TrainState,
               batches: dict, count: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """The first `count` of the K batches stacked in `batches` (leading axis K), one `step` each;
    returns the state and the steps' metrics stacked (rows from `count` on are zeros).

    `count` is a traced scalar: one compiled program serves calls of any length up to K, and
    every step runs the same compiled loop body, so a run's results do not depend on how its
    steps are grouped into calls (a resumed run groups them differently).

    The step is traced once: its metrics' shapes (for the stacked outputs) and the loop body
    come from the same trace, as a nested jit whose trace is cached for the body's call."""
    slots = jax.tree.leaves(batches)[0].shape[0]
    step = jax.jit(step)
    _, shapes = jax.eval_shape(step, state, jax.tree.map(lambda x: x[0], batches))
    stacked = jax.tree.map(lambda m: jnp.zeros((slots, *m.shape), m.dtype), shapes)

    def body(i, carry):
        s, out = carry
        s, m = step(s, jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, False),
                                    batches))
        return s, jax.tree.map(lambda acc, v: acc.at[i].set(v), out, m)

    return jax.lax.fori_loop(0, count, body, (state, stacked))


def train_compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """XLA options for the train step. On CPU, optimization barriers are kept through fusion so
    that the residual stream's gradient is stored once per layer instead of being recomputed in
    every consumer (see `jaxlm.models.layers.materialize_grad`)."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}


@dataclass
class CompiledSteps:
    """The jitted steps for one model, optimizer and mesh, and the shardings they use.

    `eval` is the one evaluator (`jaxlm.evaluation.Evaluator`) over the training shardings;
    `train_many(state, stacked batches, count)` is `many_steps` over `train`'s step, its batches
    placed with `stacked_sharding` (the batch sharding behind a leading, unsharded steps axis).
    """

    train: Callable[[TrainState, dict], tuple[TrainState, dict]]
    eval: Evaluator
    init: Callable[[], TrainState]
    # init_replacing(replace)(given): a fresh state whose parameters are
    # replace(fresh params, given) (e.g. a pretrained backbone copied in): compiled without the
    # random initialisation of the weights `replace` overwrites, which XLA drops as unused
    init_replacing: Callable[[Callable[[Any, Any], Any]], Callable[[Any], TrainState]]
    layout: StateLayout
    state_sharding: TrainState
    batch_sharding: NamedSharding
    abstract_state: TrainState
    train_many: Callable[[TrainState, dict, Any], tuple[TrainState, dict]] | None = None
    stacked_sharding: NamedSharding | None = None

    def checkpoint_target(self) -> Any:
        """Abstract arrays with this mesh's shardings, in the checkpoint layout: orbax's
        restore target."""
        return abstract_with_shardings(self.layout.to_checkpoint(self.abstract_state),
                                       self.layout.to_checkpoint(self.state_sharding))


def no_mesh():
    """A context without a mesh: building a model (or its abstract shape) must not place Flax's
    partitioning names on the active mesh, where they are logical names, not mesh axes."""
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ()))


def compile_steps(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                  loss_fn: LossFn, lr_schedule: optax.Schedule, mesh: Mesh, *, seed: int = 0,
                  grad_accum: int = 1, dropout: bool = False, rules: dict[str, Any] | None = None,
                  step_fn: Callable[..., tuple[TrainState, dict]] = train_step,
                  trainable: Any = None) -> CompiledSteps:
    """Sharded init / train / eval for a model: `make_model` builds a fresh (unsharded) model;
    `step_fn` (default `train_step`) may be a custom step with the same keyword arguments;
    `trainable` (an nnx filter; None: everything) limits what trains (`StateLayout.of`)."""
    def unsharded_model() -> nnx.Module:
        # Flax would place `nnx.with_partitioning` names on the mesh at creation; jaxlm maps
        # them through its rules instead (named_shardings) and lets jit place the state
        with nnx.use_eager_sharding(False), no_mesh():
            return make_model()

    layout = StateLayout.of(unsharded_model, tx, trainable)

    def init() -> TrainState:
        return new_state(nnx.to_pure_dict(nnx.state(unsharded_model(), nnx.Param)), tx, seed,
                         lambda p: layout.split(p)[0])

    def init_replacing(replace: Callable[[Any, Any], Any]) -> Callable[[Any], TrainState]:
        def init_with(given: Any) -> TrainState:
            fresh = nnx.to_pure_dict(nnx.state(unsharded_model(), nnx.Param))
            return new_state(replace(fresh, given), tx, seed, lambda p: layout.split(p)[0])

        return jax.jit(init_with, out_shardings=shardings)

    abstract_state = jax.eval_shape(init)
    # the nnx layout keeps each variable's logical-axis metadata, which the shardings come from
    params_sharding = layout.plain_params(named_shardings(layout.abstract_params, mesh, rules))
    shardings = layout.from_checkpoint(
        named_shardings(layout.nnx, mesh, rules),
        None if layout.trained is None else layout.split(params_sharding)[1])
    batch_prefix = rows_sharding(mesh, rules)
    stacked_prefix = NamedSharding(mesh, P(None, *batch_prefix.spec))

    def one_step(s: TrainState, b: dict) -> tuple[TrainState, dict]:
        return step_fn(s, b, layout=layout, tx=tx, loss_fn=loss_fn, lr_schedule=lr_schedule,
                       grad_accum=grad_accum, dropout=dropout)

    train = jax.jit(one_step, in_shardings=(shardings, batch_prefix),
                    out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,),
                    compiler_options=train_compiler_options(mesh))
    train_many = jax.jit(lambda s, bs, n: many_steps(one_step, s, bs, n),
                         in_shardings=(shardings, stacked_prefix, replicated(mesh)),
                         out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,),
                         compiler_options=train_compiler_options(mesh))
    evaluator = Evaluator(layout.model, loss_fn, params_sharding=shardings.params,
                          batch_sharding=batch_prefix)
    return CompiledSteps(train=train, eval=evaluator, init=jax.jit(init, out_shardings=shardings),
                         init_replacing=init_replacing, layout=layout,
                         state_sharding=shardings, batch_sharding=batch_prefix,
                         abstract_state=abstract_state, train_many=train_many,
                         stacked_sharding=stacked_prefix)
