"""The one evaluator: jitted sums of a task's loss and its model outputs over fixed batches.

It serves validation during training (over the training shardings), `jaxlm evaluate`
(`evaluate_run`: a run's task, data and checkpoint) and `jaxlm predict` (`jaxlm.inference`). Sums,
not means, are computed per batch and added on the host in float64, so any batching of the same
rows scores each row once, and `jaxlm evaluate` with the run's own batches reproduces the
validation loss the run logged.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxlm.metrics import perplexity
from jaxlm.sharding import put_batch, rows_sharding, shard_params, use_mesh
from jaxlm.tasks.losses import LossFn, model_inputs

SYNC_EVERY = 32  # evaluation batches dispatched between two reads of their sums


class Evaluator:
    """Jitted evaluation of parameters: `model_of(params)` rebuilds the model inside jit.

    params_sharding / batch_sharding: the training shardings (None: one device, no placement).
    """

    def __init__(self, model_of: Callable[[Any], Any], loss_fn: LossFn, *,
                 params_sharding: Any = None, batch_sharding: Any = None):
        self.model_of, self.batch_sharding = model_of, batch_sharding
        shardings = ({} if batch_sharding is None else
                     {"in_shardings": (params_sharding, batch_sharding)})

        def sums(params: Any, batch: dict) -> dict[str, jax.Array]:
            loss, aux = loss_fn(model_of(params), batch, None)
            return {"loss": loss, **aux}

        def outputs(params: Any, batch: dict) -> jax.Array:
            return model_of(params)(batch["inputs"], **model_inputs(batch))

        self._sums = jax.jit(sums, **shardings)
        self._outputs = jax.jit(outputs, **shardings)

    @classmethod
    def for_model(cls, model: nnx.Module, loss_fn: LossFn, mesh: Mesh | None = None,
                  rules: dict[str, Any] | None = None) -> tuple["Evaluator", nnx.State]:
        """An evaluator for a loaded model, and the parameters to pass it: on `mesh`, sharded
        by the model's logical axes as in training (so sums reduce over the same shards), else
        on the default device."""
        graphdef, params = nnx.split(model)
        merge = lambda p: nnx.merge(graphdef, p)  # noqa: E731
        if mesh is None:
            return cls(merge, loss_fn), params
        params, shardings = shard_params(params, mesh, rules)
        return cls(merge, loss_fn, params_sharding=shardings,
                   batch_sharding=rows_sharding(mesh, rules)), params

    def _put(self, batch: dict) -> dict:
        return batch if self.batch_sharding is None else put_batch(batch, self.batch_sharding)

    def sums(self, params: Any, batches: list[dict]) -> dict[str, float]:
        """Loss and aux sums (weight: the number of scored targets) over every batch."""
        # batches are dispatched in groups before their results are read: one host sync per
        # group, not per batch, and at most a group's inputs held on the devices
        totals: dict[str, float] = {}
        for i in range(0, len(batches), SYNC_EVERY):
            group = [self._sums(params, self._put(b)) for b in batches[i:i + SYNC_EVERY]]
            for part in jax.device_get(group):
                for k, v in part.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        return totals

    def mean_metrics(self, params: Any, batches: list[dict]) -> dict[str, float]:
        """Mean loss per scored target, its perplexity, every other aux entry as a mean, and
        the number of scored targets."""
        sums = self.sums(params, batches)
        weight = sums.pop("weight", 0.0)
        loss = sums.pop("loss", 0.0) / max(weight, 1.0)
        return {"loss": loss, "perplexity": perplexity(loss),
                **{k: v / max(weight, 1.0) for k, v in sums.items()}, "tokens": int(weight)}

    def outputs(self, params: Any, batches: list[dict]) -> np.ndarray:
        """The model's outputs (e.g. class logits) for every row, padding rows included (of
        packed classification rows, [rows, K, C]: every example slot)."""
        rows = [np.asarray(jax.device_get(self._outputs(params, self._put(b)))) for b in batches]
        return np.concatenate(rows) if rows else np.zeros((0,), np.float32)


def _default_source(run: Any, task: Any, split: str):
    """The split to evaluate when no --data is given: `split` when the run's data has it, else
    test, else validation (a language model's: the validation the run used, so the result matches
    the run's own)."""
    sources = task.open_sources(run.cfg)
    for name in ((split, "test", "validation") if split != "train" else ("train",)):
        if name in sources:
            return sources[name], name
    return sources["train"], "train"


def _fit_batch(size: int, mesh: Mesh) -> int:
    """`size` rounded up to a multiple of the mesh's data-parallel shards (padding rows weigh 0)."""
    from jaxlm.sharding import data_parallel_size

    dp = data_parallel_size(mesh)
    return -(-size // dp) * dp


def evaluate_run(run_dir: str, spec: str | None = None, *, split: str = "test",
                 checkpoint: str | int = "best", batch_size: int = 0,
                 generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """`jaxlm evaluate`: a run's task evaluation (a classifier's report; a language model's loss
    and perplexity; a generative model's target loss and generation scores, with "predictions")
    on a dataset spec, by default the run's own test or validation split.
    batch_size 0: the run's evaluation batch size. generation: overrides of a generative run's
    saved settings (max_new_tokens, temperature, top_k, top_p, seed; None values keep them)."""
    from jaxlm.errors import ConfigError, DataError
    from jaxlm.run import load_run
    from jaxlm.sharding import mesh_for_run
    from jaxlm.tasks import task_for

    run = load_run(run_dir, checkpoint)
    task = task_for(run.task).from_head(run.head, run.cfg)
    overrides = {k: v for k, v in (generation or {}).items() if v is not None}
    if overrides:
        if not hasattr(task, "set_generation"):
            raise ConfigError(f"Generation settings ({', '.join(sorted(overrides))}) were given, "
                              f"but '{run_dir}' holds a {run.task} model, which evaluate scores "
                              "without generating. Leave them out.", culprit=sorted(overrides)[0])
        task.set_generation(**overrides)
    whole = spec is not None
    if spec is None:
        source, split = _default_source(run, task, split)
        spec = source.name
        whole = split in task.final_splits  # as the run's final report on it
    else:
        source = task.open_source(run.cfg, spec, split, run.class_names or None)
        if run.task == "classification" and source.label_names is None:
            raise DataError(f"{source.name} has no labels to evaluate against.", culprit=spec)
    mesh = mesh_for_run(run.cfg.mesh)
    evaluator, params = Evaluator.for_model(run.model, task.loss, mesh, run.cfg.mesh.rules)
    # a language model's own validation as it was run (train.eval_batches caps it); the splits
    # a fine-tuning run reported at the end, and other data, in whole
    with use_mesh(mesh, run.cfg.mesh.rules):  # rows laid out for the mesh, as in training
        batches = task.eval_batches(run.cfg, run.tokenizer, source, whole=whole,
                                    batch_size=_fit_batch(batch_size or run.cfg.train.eval_rows,
                                                          mesh))
    report = task.evaluate(evaluator, params, batches)
    if getattr(batches, "generate", False):
        report["generation"] = task.generation
    report.update({"data": spec, "split": getattr(source, "split", split),
                   "checkpoint": run.checkpoint, "task": run.task})
    return report
