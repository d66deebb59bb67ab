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
from jaxlm.interop.params import (ParamPath, abstract_params, model_kwargs, objective_of,
                                  path_str, to_state)
from jaxlm.train.checkpoint import Checkpointer, latest_intact, require_intact
from jaxlm.train.run_dir import load_run_config, prepare_run_dir, write_model_spec

IMPORT_INFO = "hf_import.json"


def checkpoint_steps(folder: Path, item: str = "state") -> list[int]:
    """Finished checkpoint steps in an orbax folder (a step folder is renamed into place when
    complete)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / item).is_dir())


def _checkpoint_item(run_dir: Path, checkpoint: str | int) -> tuple[Path, str | None, str]:
    """(orbax item folder, subtree holding the params or None, description) for a checkpoint
    choice: "best" (a fine-tuning run's best-validation params, else the latest), "latest", or a
    step number."""
    if checkpoint == "best":
        best = latest_intact(run_dir / "best", checkpoint_steps(run_dir / "best", "params"),
                             "best checkpoint")
        if best is not None:
            return run_dir / "best" / str(best) / "params", None, f"best (step {best})"
        checkpoint = "latest"
    steps = checkpoint_steps(run_dir / "checkpoints")
    if not steps:
        raise CheckpointError(f"No checkpoint found in '{run_dir / 'checkpoints'}'. Train or "
                              "convert into this run directory first.", culprit=str(run_dir))
    if checkpoint == "latest":
        step = latest_intact(run_dir / "checkpoints", steps)
        if step is None:
            raise CheckpointError(f"Every checkpoint in '{run_dir / 'checkpoints'}' is damaged "
                                  "(see the warnings above); restore them from a backup.",
                                  culprit=str(run_dir / "checkpoints"))
    else:
        try:
            step = int(checkpoint)
        except ValueError:
            raise CheckpointError(f"The checkpoint must be best, latest or a step number, got "
                                  f"'{checkpoint}'.", culprit=str(checkpoint)) from None
        if step not in steps:
            raise CheckpointError(f"'{run_dir}' has no checkpoint at step {step}; it has steps "
                                  f"{', '.join(map(str, steps))}.", culprit=str(run_dir))
        require_intact(run_dir / "checkpoints", step)
    return run_dir / "checkpoints" / str(step) / "state", "params", f"step {step}"


def read_run_params(run_dir: str | Path, checkpoint: str | int = "latest"
                    ) -> tuple[dict[ParamPath, np.ndarray], str]:
    """{param path: numpy array} of a run's checkpoint, and which checkpoint that was.

    Reads orbax's own metadata and restores only the parameters, as host numpy arrays: the
    optimizer state and the mesh the run was saved on do not matter.
    """
    import orbax.checkpoint as ocp

    path, key, which = _checkpoint_item(Path(run_dir), checkpoint)
    path = path.absolute()
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(path)  # the item's tree, no step files
        tree = meta if key is None else {key: meta[key]}
        target = jax.tree.map(lambda m: np.zeros((), np.float32), tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        out = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=key is not None))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise CheckpointError(f"The checkpoint '{path}' could not be read as jaxlm parameters "
                              f"({type(e).__name__}: {str(e)[:300]}).", culprit=str(path)) from None
    flat = {}
    for keys, arr in jax.tree_util.tree_flatten_with_path(out if key is None else out[key])[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in keys]
        if names and names[-1] == "value":  # nnx Variables are stored as {"value": array}
            names = names[:-1]
        flat[tuple(int(n) if n.isdigit() else n for n in names)] = np.asarray(arr)
    return flat, which


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


def _spec_from_config(run_dir: Path, flat: dict, tok: TextTokenizer) -> dict:
    """A model.json-like spec for runs that lack one (older runs): the config plus what the
    parameter shapes say (vocabulary, heads)."""
    cfg = load_run_config(run_dir)
    emb = flat.get(("backbone", "embeddings", "token", "embedding"))
    if emb is None:
        raise CheckpointError(f"The checkpoint in '{run_dir}' has no backbone token embedding; it "
                              "is not a jaxlm model checkpoint.", culprit=str(run_dir))
    pad = cfg.model.pad_token_id if cfg.model.vocab_size else (tok.pad_id or 0)
    mcfg = dataclasses.replace(cfg.model, vocab_size=int(emb.shape[0]), pad_token_id=pad)
    objective = objective_of(flat) or cfg.train.task
    raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    head = model_kwargs(mcfg, flat, objective, _find_key(raw, "pooling"))
    return {"objective": objective, "model": dataclasses.asdict(mcfg), "head": head}


def _load_run(run_dir: Path, checkpoint: str | int
              ) -> tuple[ModelConfig, nnx.State, TextTokenizer, dict]:
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"Run directory '{run_dir}' has no tokenizer.json; it was not "
                              "written by jaxlm, or is incomplete.", culprit=str(tok_path))
    tok = TextTokenizer.load(tok_path)
    flat, which = read_run_params(run_dir, checkpoint)
    spec_path = run_dir / "model.json"
    spec = (json.loads(spec_path.read_text()) if spec_path.is_file()
            else _spec_from_config(run_dir, flat, tok))
    mcfg = ModelConfig(**spec["model"]).resolved()
    objective, head = spec["objective"], dict(spec.get("head") or {})
    kw = ({k: head[k] for k in ("num_labels", "pooling", "pooler") if k in head}
          if objective == "classification" else {})
    abstract = abstract_params(mcfg, {objective: kw})
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
            f"The checkpoint in '{run_dir}' ({which}) does not match the model its run describes "
            f"(model.json / config.yaml): {'; '.join(parts)}. The run directory was modified or "
            "mixes two runs.", culprit=str(run_dir))
    names = head.get("class_names")
    groups = [g for g, root in GROUP_ROOTS.items() if any(p[:len(root)] == root for p in flat)]
    info = {"source": str(run_dir), "checkpoint": which, "task": objective, "heads": groups,
            "num_labels": kw.get("num_labels"), "id2label": dict(enumerate(names)) if names else None,
            "pooler": bool(kw.get("pooler", False)), "pooling": kw.get("pooling")}
    return mcfg, to_state(flat, abstract), tok, info


def load_params(path: str | Path, *, checkpoint: str | int = "latest"
                ) -> tuple[ModelConfig, nnx.State, TextTokenizer, dict[str, Any]]:
    """(ModelConfig, params, tokenizer, info) from a run directory (RUN_DIR/checkpoints/STEP picks
    a step), a Hugging Face folder or `hf:org/name`.

    params hold the backbone and the heads found (see `import_hf`). checkpoint, for run
    directories: "latest", "best" (a fine-tuning run's best validation checkpoint) or a step.
    info: source, task, heads, num_labels, id2label, pooler, pooling, and "checkpoint" for runs.
    """
    s = str(path)
    if s.startswith(HUB_PREFIX):
        return import_hf(s)
    p = Path(s).expanduser()
    if p.name.isdigit() and p.parent.name == "checkpoints":
        p, checkpoint = p.parent.parent, int(p.name)
    if (p / "config.yaml").is_file():
        return _load_run(p, checkpoint)
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
    objective = task if task in CHOICES["train.task"] else (
        "masked" if cfg.family == "bert" else "causal")
    run_cfg = Config(name=run_dir.name, model=cfg.resolved())
    run_cfg.train.task = objective
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
    head = {}
    if task == "classification":
        n = info["num_labels"]
        labels = info.get("id2label") or {}
        head = {"num_labels": n, "class_names": [str(labels.get(i, i)) for i in range(n)],
                "pooling": info.get("pooling") or "first", "pooler": bool(info.get("pooler"))}
    write_model_spec(run_dir, cfg.resolved(), task, **head)
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


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str | int = "best",
               overwrite: bool = False) -> dict[str, Any]:
    """`jaxlm export`: a run directory's checkpoint (default: the best one of a fine-tuning run,
    else the latest) as a Hugging Face folder."""
    from jaxlm.interop.hf import export_hf

    cfg, params, tok, info = load_params(run_dir, checkpoint=checkpoint)
    path = export_hf(cfg, params, out, tokenizer=tok, objective=info["task"],
                     pooling=info["pooling"] if info["task"] == "classification" else None,
                     id2label=info["id2label"], overwrite=overwrite)
    hf_cfg = json.loads((path / "config.json").read_text())
    return {"out": str(path), "architecture": hf_cfg["architectures"][0],
            "checkpoint": info.get("checkpoint"), "family": cfg.family}
