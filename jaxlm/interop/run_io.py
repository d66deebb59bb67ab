"""Parameters in and out of jaxlm run directories, whatever wrote them.

`load_params` is the one entry point for "start from pretrained weights": a pretrain or finetune
run directory (full train state), a run written by `jaxlm convert` (parameters only), a Hugging
Face folder or `hf:org/name`. Run checkpoints are read through orbax's own metadata, restoring the
"params" subtree alone onto the host, so the optimizer state and the mesh the run was saved on do
not matter.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from jaxlm.config import CHOICES, Config, ModelConfig
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.interop.hf import HUB_PREFIX, import_hf
from jaxlm.interop.hf_weights import GROUP_ROOTS
from jaxlm.interop.params import (ParamPath, abstract_params, heads_in, model_kwargs, path_str,
                                  to_state)
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.run_dir import load_run_config, prepare_run_dir

IMPORT_INFO = "hf_import.json"


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Finished checkpoint steps (orbax renames a step folder into place when it is complete)."""
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def read_run_params(run_dir: str | Path, step: int | None = None
                    ) -> tuple[dict[ParamPath, np.ndarray], int]:
    """{param path: numpy array} of a run's checkpoint (latest step by default), and the step."""
    import orbax.checkpoint as ocp

    run_dir = Path(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"No checkpoint found in '{run_dir / 'checkpoints'}'. Train or "
                              "convert into this run directory first.", culprit=str(run_dir))
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"'{run_dir}' has no checkpoint at step {step}; it has steps "
                              f"{', '.join(map(str, steps))}.", culprit=str(run_dir))
    path = (run_dir / "checkpoints" / str(step) / "state").absolute()
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(path)  # the item's tree, no step files
        if "params" not in meta:
            raise KeyError("params")
        target = {"params": jax.tree.map(lambda m: np.zeros((), np.float32), meta["params"])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        state = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise CheckpointError(f"The checkpoint '{path}' could not be read as a jaxlm train state "
                              f"({type(e).__name__}: {str(e)[:300]}).", culprit=str(path)) from None
    flat = {}
    for keys, arr in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in keys]
        if names and names[-1] == "value":  # nnx Variables are stored as {"value": array}
            names = names[:-1]
        flat[tuple(int(n) if n.isdigit() else n for n in names)] = np.asarray(arr)
    return flat, step


def _find_key(raw: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested config mapping (None when absent)."""
    if isinstance(raw, dict):
        if key in raw:
            return raw[key]
        for v in raw.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _load_run(run_dir: Path, step: int | None) -> tuple[ModelConfig, nnx.State, TextTokenizer, dict]:
    cfg = load_run_config(run_dir)
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"Run directory '{run_dir}' has no tokenizer.json; it was not "
                              "written by jaxlm, or is incomplete.", culprit=str(tok_path))
    tok = TextTokenizer.load(tok_path)
    flat, step = read_run_params(run_dir, step)
    emb = flat.get(("backbone", "embeddings", "token", "embedding"))
    if emb is None:
        raise CheckpointError(f"The checkpoint in '{run_dir}' has no backbone token embedding; it "
                              "is not a jaxlm model checkpoint.", culprit=str(run_dir))
    pad = cfg.model.pad_token_id if cfg.model.vocab_size else (tok.pad_id or 0)
    mcfg = dataclasses.replace(cfg.model, vocab_size=int(emb.shape[0]), pad_token_id=pad).resolved()
    meta = json.loads((run_dir / IMPORT_INFO).read_text()) if (run_dir / IMPORT_INFO).is_file() else {}
    heads = heads_in(flat)
    objective = meta.get("task") or heads["objective"] or cfg.train.objective
    raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    pooling = meta.get("pooling") or _find_key(raw, "pooling")
    kw = model_kwargs(mcfg, flat, objective, pooling)
    abstract = abstract_params(mcfg, {objective: kw})
    unknown = [path_str(p) for p in flat if p not in abstract]
    bad = [f"{path_str(p)} {list(a.shape)} vs {list(abstract[p].get_value().shape)}"
           for p, a in flat.items() if p in abstract
           and tuple(a.shape) != tuple(abstract[p].get_value().shape)]
    if unknown or bad:
        raise CheckpointError(
            f"The checkpoint in '{run_dir}' does not match its config.yaml: "
            f"{'unexpected parameters ' + ', '.join(unknown[:8]) if unknown else ''}"
            f"{'; ' if unknown and bad else ''}{'shape mismatches ' + '; '.join(bad[:6]) if bad else ''}"
            ". The run directory was modified or mixes two runs.", culprit=str(run_dir))
    groups = [g for g, root in GROUP_ROOTS.items() if any(p[:len(root)] == root for p in flat)]
    info = {"source": str(run_dir), "step": step, "task": objective, "heads": groups,
            "num_labels": kw.get("num_labels") if "head.classifier" in groups else None,
            "id2label": ({int(k): v for k, v in meta["id2label"].items()}
                         if meta.get("id2label") else None),
            "pooler": kw.get("pooler", False), "pooling": kw.get("pooling")}
    return mcfg, to_state(flat, abstract), tok, info


def load_params(path: str | Path, *, step: int | None = None
                ) -> tuple[ModelConfig, nnx.State, TextTokenizer, dict[str, Any]]:
    """(ModelConfig, params, tokenizer, info) from a run directory, a Hugging Face folder or
    `hf:org/name`. The params hold the backbone and the heads found; see `import_hf` for info."""
    s = str(path)
    if s.startswith(HUB_PREFIX):
        return import_hf(s)
    p = Path(s).expanduser()
    if (p / "config.yaml").is_file():
        return _load_run(p, step)
    if (p / "config.json").is_file():
        return import_hf(p)
    raise CheckpointError(f"'{p}' is neither a jaxlm run directory (config.yaml + checkpoints/) "
                          "nor a Hugging Face checkpoint folder (config.json). Pass one of those, "
                          "or hf:org/name.", culprit=str(p))


def write_run(run_dir: str | Path, cfg: ModelConfig, params: nnx.State, tok: TextTokenizer,
              info: dict[str, Any], *, task: str, overwrite: bool = False, seed: int = 0) -> Path:
    """A run directory holding these parameters as a step-0 checkpoint ({"params", "step",
    "rng"}, no optimizer state), the tokenizer, a config.yaml and hf_import.json (provenance)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"Output run directory '{run_dir}' is not empty. Choose a new --out or "
                          "pass --overwrite to replace it.", culprit=str(run_dir))
    objective = task if task in CHOICES["train.objective"] else (
        "masked" if cfg.family == "bert" else "causal")
    run_cfg = Config(name=run_dir.name, model=cfg.resolved())
    run_cfg.train.objective = objective
    run_cfg.data.seq_len = min(run_cfg.data.seq_len, cfg.max_len)
    if task == "classification" and hasattr(run_cfg, "finetune"):  # the head's settings
        run_cfg.finetune.pooling = info.get("pooling") or run_cfg.finetune.pooling
        run_cfg.finetune.pooler = bool(info.get("pooler"))
    prepare_run_dir(run_cfg, run_dir, overwrite=overwrite)
    (run_dir / IMPORT_INFO).unlink(missing_ok=True)
    tok.save(run_dir / "tokenizer.json")
    state = {"params": params, "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.key_data(jax.random.key(seed))}
    ckpt = Checkpointer(run_dir / "checkpoints", keep=1, async_save=False)
    try:
        ckpt.save(0, state, {"iterator": None})
    finally:
        ckpt.close()
    (run_dir / IMPORT_INFO).write_text(json.dumps({**info, "task": task}, indent=2, default=str))
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
    from jaxlm.interop.params import apply_params
    from jaxlm.models import build_model

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
    write_run(out, cfg, state, tok, meta, task=task, overwrite=overwrite, seed=seed)
    n_params = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state))
    return {**meta, "params": n_params, "family": cfg.family, "run_dir": str(out)}


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """`jaxlm export`: a run directory's checkpoint as a Hugging Face folder."""
    from jaxlm.interop.hf import export_hf

    cfg, params, tok, info = load_params(run_dir, step=step)
    path = export_hf(cfg, params, out, tokenizer=tok, objective=info["task"],
                     pooling=info["pooling"] if info["task"] == "classification" else None,
                     id2label=info["id2label"], overwrite=overwrite)
    hf_cfg = json.loads((path / "config.json").read_text())
    return {"out": str(path), "architecture": hf_cfg["architectures"][0],
            "step": info.get("step"), "family": cfg.family}
