"""Starting a classifier from a pretrained backbone: a jaxlm pretraining run, or a Hugging Face
checkpoint imported into jaxlm modules.

The backbone is copied exactly; the task head is freshly initialised. Model fields that the
fine-tuning config leaves at their defaults are inherited from the checkpoint; fields it sets must
agree with the checkpoint, and any parameter whose shape differs is listed in the error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxlm.config import Config, ModelConfig
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import CheckpointError, ConfigError

# Fields that do not change parameter shapes or meaning: the fine-tuning config may set them freely.
FREE_FIELDS = {"dropout", "remat", "dtype", "param_dtype", "attention_impl"}


@dataclass
class Pretrained:
    """What a fine-tuning run takes from a checkpoint."""

    model: ModelConfig  # resolved
    backbone: Any  # nnx.State of the backbone's parameters (host or device arrays)
    tokenizer: TextTokenizer
    source: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. a HF pooler


def _run_and_step(path: Path) -> tuple[Path, int | None]:
    """RUN_DIR -> (RUN_DIR, None = latest); RUN_DIR/checkpoints/STEP -> (RUN_DIR, STEP)."""
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    return path, None


def load_run_backbone(path: str | Path) -> Pretrained:
    """The backbone parameters, model config and tokenizer of a jaxlm pretraining run."""
    from jaxlm.models import build_model
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import LOSSES
    from jaxlm.train.checkpoint import Checkpointer, abstract_with_shardings
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.pretrain import model_config_for
    from jaxlm.train.run_dir import load_run_config
    from jaxlm.train.steps import compile_steps

    run_dir, step = _run_and_step(Path(path))
    if not run_dir.is_dir():
        raise CheckpointError(f"finetune.init_from '{path}' does not exist. Give the run directory "
                              "of a `jaxlm pretrain` run (or RUN_DIR/checkpoints/STEP, or hf:DIR).",
                              culprit=str(path))
    pcfg = load_run_config(run_dir)
    tok = TextTokenizer.load(run_dir / "tokenizer.json")
    mcfg = model_config_for(pcfg, tok)
    tx, lr = build_optimizer(pcfg.optim, pcfg.train.steps)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with use_mesh(mesh):
        steps = compile_steps(lambda: build_model(mcfg, pcfg.train.objective), tx,
                              LOSSES[pcfg.train.objective], lr, mesh)
        ckpt = Checkpointer(run_dir / "checkpoints", async_save=False)
        try:
            if step is not None and step not in ckpt.all_steps():
                raise CheckpointError(f"Run '{run_dir}' has no checkpoint at step {step}; it has "
                                      f"{ckpt.all_steps() or 'none'}.", culprit=str(path))
            state, _ = ckpt.restore(step, abstract_with_shardings(steps.abstract_state,
                                                                  steps.state_sharding))
        finally:
            ckpt.close()
    return Pretrained(model=mcfg, backbone=state["params"]["backbone"], tokenizer=tok,
                      source=str(path))


def load_hf_backbone(path: str) -> Pretrained:
    """A Hugging Face checkpoint (hf:DIR or hf:org/name) imported into jaxlm modules."""
    from jaxlm.interop.hf import import_hf

    mcfg, params, tok, info = import_hf(path)
    extra = {}
    if "head" in params and "pooler" in params["head"]:
        extra["pooler"] = params["head"]["pooler"]
    return Pretrained(model=mcfg.resolved(), backbone=params["backbone"], tokenizer=tok,
                      source=path, extra=extra)


def load_pretrained(init_from: str) -> Pretrained:
    if init_from.startswith("hf:"):
        return load_hf_backbone(init_from)
    return load_run_backbone(init_from)


def merged_model_config(user: ModelConfig, pre: ModelConfig) -> ModelConfig:
    """Inherit fields the user left at defaults; refuse fields that contradict the checkpoint."""
    defaults = ModelConfig()
    out = dataclasses.replace(pre)
    conflicts = []
    for f in dataclasses.fields(ModelConfig):
        mine = getattr(user, f.name)
        if f.name in FREE_FIELDS:
            setattr(out, f.name, mine)
            continue
        if mine == getattr(defaults, f.name) or mine is None:
            continue
        if f.name == "vocab_size" and mine == 0:
            continue
        if mine != getattr(pre, f.name):
            conflicts.append(f"model.{f.name} is {mine!r} in the config but "
                             f"{getattr(pre, f.name)!r} in the checkpoint")
    if conflicts:
        raise ConfigError("The fine-tuning config's model does not match the pretrained "
                          "checkpoint: " + "; ".join(conflicts) + ". Remove these keys from the "
                          "model section (they are inherited from the checkpoint) or start from a "
                          "matching checkpoint.", culprit="model")
    return out


def _flat(state: Any) -> dict[str, tuple[int, ...]]:
    flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
    return {"/".join(map(str, k)): tuple(v.get_value().shape if isinstance(v, nnx.Variable)
                                         else v.shape) for k, v in flat}


def check_backbone_shapes(expected: Any, loaded: Any, source: str) -> None:
    """Every backbone parameter present with the same shape, or an error listing the culprits."""
    want, have = _flat(expected), _flat(loaded)
    problems = [f"{k}: missing from the checkpoint" for k in sorted(set(want) - set(have))]
    problems += [f"{k}: unexpected in the checkpoint" for k in sorted(set(have) - set(want))]
    problems += [f"{k}: shape {have[k]} in the checkpoint, {want[k]} in the model"
                 for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... ({len(problems)} in all)"
                                            if len(problems) > 12 else "")
        raise CheckpointError(f"The backbone in '{source}' does not fit the configured model: "
                              f"{shown}. Use the pretraining run's model settings (and its "
                              "tokenizer), or fine-tune from scratch.", culprit=source)


def graft_backbone(params: Any, backbone: Any, shardings: Any | None = None) -> Any:
    """A copy of classifier `params` whose backbone is replaced by `backbone` (exactly)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(backbone)]
    target = params["backbone"]
    treedef = jax.tree.structure(target)
    if shardings is not None:
        new = [jax.device_put(x, s) for x, s in zip(leaves, jax.tree.leaves(shardings["backbone"]))]
    else:
        new = [jax.numpy.asarray(x) for x in leaves]
    params["backbone"] = jax.tree.unflatten(treedef, [n.astype(t.dtype) for n, t in
                                                      zip(new, jax.tree.leaves(target))])
    return params


def finetune_model_config(cfg: Config, pre: Pretrained | None, tok: TextTokenizer) -> ModelConfig:
    """The classifier's model config: inherited from the checkpoint, or from cfg + tokenizer."""
    if pre is None:
        from jaxlm.train.pretrain import model_config_for
        return model_config_for(cfg, tok)
    return merged_model_config(cfg.model, pre.model).resolved()
