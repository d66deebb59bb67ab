"""Plain {path: array} parameter dicts <-> nnx.State with jaxlm's metadata, and copying loaded
parameters into a freshly built model (reporting exactly which ones stay at their init).

Shared by run directories (`jaxlm.run`) and Hugging Face conversion (`jaxlm.interop`), so neither
imports the other for it."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.errors import CheckpointError
from jaxlm.models import build_model
from jaxlm.models.lora import apply_lora

ParamPath = tuple[str | int, ...]


def path_str(path: ParamPath) -> str:
    """A parameter path as dotted text, e.g. backbone.layers.0.attn.q_proj.kernel."""
    return ".".join(map(str, path))


def abstract_params(cfg: ModelConfig, tasks: dict[str, dict],
                    lora: dict | None = None) -> dict[ParamPath, nnx.Variable]:
    """Abstract Params (shapes + logical-axis metadata) of the models named in `tasks`
    ({task: build_model kwargs}; with `lora`'s adapters), merged: the backbone is shared, heads
    differ by root."""
    out: dict[ParamPath, nnx.Variable] = {}
    for task, kw in tasks.items():
        out.update(flat_params(abstract_model(cfg, task, kw, lora)))
    return out


def abstract_model(cfg: ModelConfig, task: str, kw: dict, lora: dict | None = None
                   ) -> nnx.Module:
    """The model for `task` (build_model kwargs `kw`, `lora`'s adapters) as shapes only."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: apply_lora(build_model(cfg, task, **kw), lora))


def flat_params(model: nnx.Module) -> dict[ParamPath, nnx.Variable]:
    """{param path: Param} of a model."""
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def to_state(flat: dict[ParamPath, Any], abstract: dict[ParamPath, nnx.Variable]) -> nnx.State:
    """An nnx.State of Params (jax arrays, metadata from `abstract`) for the paths in `flat`."""
    items = []
    for path, value in flat.items():
        var = abstract[path]
        items.append((path, var.replace(jnp.asarray(value, dtype=var.get_value().dtype))))
    return nnx.from_flat_state(items)


def to_flat(params: nnx.State | dict) -> dict[ParamPath, np.ndarray]:
    """{path: numpy array} for an nnx.State (or nested dict) of parameters."""
    if isinstance(params, nnx.State):
        pairs = nnx.to_flat_state(params)
    else:
        pairs = nnx.to_flat_state(nnx.State(params))
    out = {}
    for path, var in pairs:
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        out[tuple(path)] = np.asarray(jax.device_get(value))
    return out


def apply_params(model: nnx.Module, params: nnx.State) -> tuple[list[str], list[str]]:
    """Copy `params` into `model` where the paths match; returns (fresh, unused): the model's
    parameters left at their init (e.g. a new classifier) and the given ones the model has no
    place for (e.g. an MLM head when fine-tuning a classifier). A shape mismatch is an error."""
    current = flat_params(model)
    given = dict(nnx.to_flat_state(params))
    bad = [f"{path_str(p)} {list(v.get_value().shape)} vs model {list(current[p].get_value().shape)}"
           for p, v in given.items() if p in current
           and tuple(v.get_value().shape) != tuple(current[p].get_value().shape)]
    if bad:
        raise CheckpointError(
            f"Pretrained parameters do not fit this model: {'; '.join(bad[:6])}"
            f"{' ...' if len(bad) > 6 else ''}. Build the model from the checkpoint's own config "
            "(vocabulary size, widths and label count must match).", culprit="params")
    updates = [(p, current[p].replace(jnp.asarray(v.get_value(), current[p].get_value().dtype)))
               for p, v in given.items() if p in current]
    nnx.update(model, nnx.from_flat_state(updates))
    fresh = sorted(path_str(p) for p in current if p not in given)
    unused = sorted(path_str(p) for p in given if p not in current)
    return fresh, unused


def task_of(flat_paths: Any) -> str | None:
    """The task whose head a parameter set holds (None: backbone only, or a tied LM head, which
    has no parameters of its own)."""
    roots = {p[0] for p in flat_paths}
    for root, task in (("head", "classification"), ("mlm_head", "masked"), ("lm_head", "causal")):
        if root in roots:
            return task
    return None


def model_kwargs(cfg: ModelConfig, flat: dict[ParamPath, Any], task: str,
                 pooling: str | None = None) -> dict[str, Any]:
    """build_model keyword arguments that reproduce the heads present in `flat`."""
    if task != "classification":
        return {}
    kernel = flat.get(("head", "classifier", "kernel"))
    num_labels = int(np.shape(kernel)[-1]) if kernel is not None else 2
    pooler = ("head", "pooler", "kernel") in flat
    return {"num_labels": num_labels, "pooler": pooler,
            "pooling": pooling or ("first" if cfg.family == "bert" else "last")}


def model_from_params(cfg: ModelConfig, task: str, head: dict, flat: dict[ParamPath, Any], *,
                      where: str = "The checkpoint", lora: dict | None = None) -> nnx.Module:
    """The model for `task` (with `head`'s num_labels / pooling / pooler) holding exactly the
    parameters in `flat`, on the default device; any unexpected, missing or misshapen parameter is
    a CheckpointError that starts with `where`. The model is assembled from an abstract one, so
    no random initialisation is computed and thrown away. `lora`: model.json's adapters."""
    kw = ({k: head[k] for k in ("num_labels", "pooling", "pooler") if k in head}
          if task == "classification" else {})
    model = abstract_model(cfg, task, kw, lora)
    abstract = flat_params(model)
    unknown = [path_str(p) for p in flat if p not in abstract]
    missing = [path_str(p) for p in abstract if p not in flat]
    bad = [f"{path_str(p)} {list(a.shape)} vs {list(abstract[p].get_value().shape)}"
           for p, a in flat.items() if p in abstract
           and tuple(a.shape) != tuple(abstract[p].get_value().shape)]
    if unknown or missing or bad:
        parts = [f"{what} {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                 for what, names in (("unexpected parameters", unknown),
                                     ("missing parameters", missing), ("shape mismatches", bad))
                 if names]
        raise CheckpointError(
            f"{where} does not match the model its run describes (model.json / config.yaml): "
            f"{'; '.join(parts)}. The run directory was modified or mixes two runs.",
            culprit=where)
    require_finite(flat, where)
    with jax.default_device(jax.devices()[0]):
        return nnx.merge(nnx.graphdef(model), to_state(flat, abstract))


_EARLIER = ("Pick an earlier checkpoint with --checkpoint STEP (`jaxlm info --run RUN_DIR` lists "
            "the steps), or rerun training from one with a lower optim.lr.")


def require_finite(flat: dict[ParamPath, Any], where: str = "The checkpoint",
                   fix: str = _EARLIER) -> None:
    """Refuse parameters holding NaN or Inf (a run that diverged before the checkpoint was
    saved): every output of such a model is meaningless, so no command uses it silently."""
    bad = [path_str(p) for p, a in flat.items()
           if np.asarray(a).dtype.kind not in "biu" and not np.isfinite(np.asarray(a)).all()]
    if bad:
        raise CheckpointError(
            f"{where} holds non-finite parameters (NaN or Inf in {', '.join(bad[:4])}"
            f"{' ...' if len(bad) > 4 else ''}): training diverged before this checkpoint was "
            f"saved, so its outputs would be meaningless. {fix}", culprit=where)
