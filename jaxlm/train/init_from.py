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
from jaxlm.data.templates import find_chat_template
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
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # a HF pooler, an LM head
    chat_template: str | None = None  # the checkpoint's (Hugging Face tokenizer_config.json)


def load_pretrained(init_from: str) -> Pretrained:
    """The backbone of a pretrain/finetune/converted run (RUN_DIR or RUN_DIR/checkpoints/STEP),
    a Hugging Face folder (hf:DIR or a folder with config.json) or a hub id (hf:org/name)."""
    from jaxlm.loading import load_params

    source = init_from
    if init_from.startswith("hf:") and Path(init_from[3:]).expanduser().is_dir():
        init_from = init_from[3:]  # hf:DIR -> the folder itself
    elif not init_from.startswith("hf:") and not Path(init_from).exists():
        config = Path("configs") / f"{Path(init_from).name}.yaml"  # runs/NAME <- configs/NAME.yaml
        build = (f" Build it first with `jaxlm pretrain --config {config}`." if
                 Path(init_from).parent.name == "runs" and config.is_file() else "")
        raise CheckpointError(f"finetune.init_from '{init_from}' does not exist.{build} Give the "
                              "run directory of a `jaxlm pretrain` run (or "
                              "RUN_DIR/checkpoints/STEP), or hf:DIR for a Hugging Face "
                              "checkpoint.", culprit=init_from)
    mcfg, params, tok, info = load_params(init_from)
    extra = {}
    if "head" in params and "pooler" in params["head"]:
        extra["pooler"] = params["head"]["pooler"]
    if "lm_head" in params:
        extra["lm_head"] = params["lm_head"]
    return Pretrained(model=mcfg.resolved(), backbone=params["backbone"], tokenizer=tok,
                      source=source, extra=extra,
                      chat_template=find_chat_template(Path(init_from).expanduser())
                      if Path(init_from).expanduser().exists() else None)


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
    """{"a/b/c": shape} of an nnx.State or a plain nested dict of arrays (the train state's)."""
    if isinstance(state, nnx.State):
        state = nnx.to_pure_dict(state)
    flat = jax.tree_util.tree_leaves_with_path(state)
    return {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k): tuple(v.shape)
            for k, v in flat}


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


def graft(target: Any, loaded: Any, shardings: Any | None = None) -> Any:
    """`loaded`'s values (exactly) in `target`'s structure, dtypes and shardings."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(loaded)]
    want = jax.tree.leaves(target)
    if len(leaves) != len(want):
        raise CheckpointError(f"Cannot copy {len(leaves)} tensors into {len(want)} parameters.")
    shard_leaves = jax.tree.leaves(shardings) if shardings is not None else [None] * len(want)
    new = [jax.device_put(x.astype(t.dtype), sh) if sh is not None else jax.numpy.asarray(x, t.dtype)
           for x, t, sh in zip(leaves, want, shard_leaves)]
    return jax.tree.unflatten(jax.tree.structure(target), new)


def init_from_pretrained(params: Any, pre: Pretrained, shardings: Any | None, use_pooler: bool
                         ) -> Any:
    """Params with the pretrained backbone copied in, and the pretrained BERT pooler when a
    classifier's head has one, and the LM head when both models are causal LMs with an untied
    one; everything else keeps its fresh initialisation."""
    def at(*path: str) -> Any:  # the shardings of a subtree (None: no placement)
        out = shardings
        for key in path:
            out = None if out is None else out[key]
        return out

    check_backbone_shapes(params["backbone"], pre.backbone, pre.source)
    params["backbone"] = graft(params["backbone"], pre.backbone, at("backbone"))
    if "lm_head" in params and "lm_head" in pre.extra:
        check_backbone_shapes(params["lm_head"], pre.extra["lm_head"], pre.source)
        params["lm_head"] = graft(params["lm_head"], pre.extra["lm_head"], at("lm_head"))
    if use_pooler and "pooler" in pre.extra:
        head = params["head"]
        head["pooler"] = graft(head["pooler"], pre.extra["pooler"], at("head", "pooler"))
    return params
