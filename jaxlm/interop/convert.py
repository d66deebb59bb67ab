"""Hugging Face checkpoints as jaxlm run directories and back: `jaxlm convert` and `jaxlm export`.

The run directory itself (paths, config, model spec, checkpoints) is `jaxlm.run.Run`; this module
only maps between it and Hugging Face's formats.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import CHOICES, Config, ModelConfig
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import ConfigError
from jaxlm.interop.hf import import_hf
from jaxlm.params import ParamPath
from jaxlm.run import LoadedRun, Run

def write_run(run_dir: str | Path, cfg: ModelConfig, params: nnx.State, tok: TextTokenizer,
              info: dict[str, Any], *, task: str, overwrite: bool = False, seed: int = 0,
              chat_template: str | None = None) -> Path:
    """A run directory holding these parameters as a step-0 checkpoint ({"params", "step",
    "rng"}, no optimizer state), the tokenizer (and its chat template, when the checkpoint has
    one, for generative fine-tuning), a config.yaml and hf_import.json (provenance)."""
    run_dir = Path(run_dir)
    run = Run(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"Output run directory '{run_dir}' is not empty. Choose a new --out or "
                          "pass --overwrite to replace it.", culprit=str(run_dir))
    run_cfg = Config(name=run_dir.name, model=cfg.resolved())
    run_cfg.train.task = task if task in CHOICES["train.task"] else (
        "masked" if cfg.family == "bert" else "causal")
    run_cfg.data.seq_len = min(run_cfg.data.seq_len, cfg.max_len)
    if task == "classification" and hasattr(run_cfg, "finetune"):  # the head's settings
        run_cfg.finetune.pooling = info.get("pooling") or run_cfg.finetune.pooling
        run_cfg.finetune.pooler = bool(info.get("pooler"))
    run.prepare(run_cfg, overwrite=overwrite)
    run.import_info_path.unlink(missing_ok=True)
    run.save_tokenizer(tok)
    if chat_template:
        from jaxlm.atomic import write_text_atomic
        from jaxlm.data.templates import CHAT_TEMPLATE_FILE
        write_text_atomic(run.path / CHAT_TEMPLATE_FILE, chat_template)
    state = {"params": params, "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.key_data(jax.random.key(seed))}
    ckpt = run.checkpointer(keep=1, async_save=False)
    try:
        ckpt.save(0, state, {"iterator": None})
    finally:
        ckpt.close()
    head = {}
    if task == "classification":
        n = info["num_labels"]
        labels = info.get("id2label") or {}
        head = {"num_labels": n, "class_names": [str(labels.get(i, i)) for i in range(n)],
                "pooling": info.get("pooling") or "first", "pooler": bool(info.get("pooler"))}
    run.write_model_spec(cfg.resolved(), task, **head)
    run.import_info_path.write_text(json.dumps({**info, "task": task}, indent=2, default=str))
    return run_dir


def _drop(params: nnx.State, root: ParamPath) -> nnx.State:
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(params)
                                if p[:len(root)] != root])


def convert_hf_to_run(src: str | Path, out: str | Path, *, task: str | None = None,
                      num_labels: int | None = None, seed: int = 0,
                      overwrite: bool = False) -> dict[str, Any]:
    """`jaxlm convert`: a Hugging Face checkpoint as a jaxlm run directory for `task`.

    The run holds a complete model for the task: heads the checkpoint lacks (a classifier for a
    new label set, BERT's pooler, an MLM head) are initialised from `seed` and listed under
    "fresh" in the returned summary and in hf_import.json; checkpoint parts the task does not use
    are listed under "unused".
    """
    from jaxlm.models import build_model
    from jaxlm.params import apply_params

    cfg, params, tok, info = import_hf(src)
    task = task or info["task"]
    if task == "causal" and cfg.family == "bert":
        raise ConfigError("BERT is bidirectional: it cannot be converted for the 'causal' task. "
                          "Use --task masked or --task classification.", culprit="--task")
    if task == "masked" and cfg.family != "bert":
        raise ConfigError(f"A '{cfg.family}' model is causal: convert it with --task causal or "
                          "--task classification.", culprit="--task")
    kw: dict[str, Any] = {}
    id2label = None
    if task == "classification":
        n = num_labels or info["num_labels"]
        if not n:
            raise ConfigError("The checkpoint has no classifier, so the label count is unknown: "
                              "pass --num-labels N.", culprit="--num-labels")
        if info["num_labels"] and n != info["num_labels"]:
            params = _drop(params, ("head", "classifier"))  # a new label set: a new classifier
        else:
            id2label = info["id2label"]
        # BERT classifiers always use the pooler, as BertForSequenceClassification does.
        kw = {"num_labels": n, "pooler": cfg.family == "bert", "pooling": info["pooling"]}
    model = build_model(cfg, task, seed=seed, **kw)
    fresh, unused = apply_params(model, params)
    state = nnx.state(model, nnx.Param)
    meta = {"source": info["source"], "model_type": info["model_type"],
            "architectures": info["architectures"], "task": task,
            "num_labels": kw.get("num_labels"), "id2label": id2label,
            "pooler": kw.get("pooler", False), "pooling": kw.get("pooling"), "fresh": fresh,
            "unused": unused, "ignored": info["ignored"],
            "tokenizer_changes": info["tokenizer_changes"]}
    from jaxlm.data.templates import find_chat_template
    write_run(out, cfg, state, tok, meta, task=task, overwrite=overwrite, seed=seed,
              chat_template=find_chat_template(info["source"]))
    n_params = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state))
    return {**meta, "params": n_params, "family": cfg.family, "run_dir": str(out)}


def export_run(run: str | Path | LoadedRun, out: str | Path, *, checkpoint: str | int = "best",
               overwrite: bool = False) -> dict[str, Any]:
    """`jaxlm export`: a run directory's checkpoint (default: the best one of a fine-tuning run,
    else the latest), or a model already loaded (`jaxlm.loading.load_model`), as a Hugging Face
    folder; a LoRA run's adapters are merged into the weights."""
    from jaxlm.interop.hf import export_hf
    from jaxlm.models.lora import merge_lora

    if not isinstance(run, LoadedRun):
        run = Run(run).load(checkpoint)
    names = run.class_names
    # a generative fine-tuning run is a causal LM: GPT2LMHeadModel / LlamaForCausalLM
    task = "causal" if run.task == "generative" else run.task
    model = merge_lora(run.model)  # a LoRA run: W + scale * A @ B, a plain model
    path = export_hf(run.model_cfg, nnx.state(model, nnx.Param), out, tokenizer=run.tokenizer,
                     task=task,
                     pooling=run.head.get("pooling") if run.task == "classification" else None,
                     id2label=dict(enumerate(names)) if names else None, overwrite=overwrite)
    chat = (run.head.get("templates") or {}).get("chat") if run.task == "generative" else None
    if chat:  # the turn markers the run was fine-tuned with, for tokenizer.apply_chat_template
        from jaxlm.data.templates import CHAT_TEMPLATE_FILE
        (path / CHAT_TEMPLATE_FILE).write_text(chat, encoding="utf-8")
    hf_cfg = json.loads((path / "config.json").read_text())
    return {"out": str(path), "architecture": hf_cfg["architectures"][0],
            "checkpoint": run.checkpoint, "family": run.model_cfg.family}
