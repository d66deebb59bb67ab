"""Tensor name maps between Hugging Face checkpoints and jaxlm parameters, and the files that hold
them (safetensors, sharded safetensors, pytorch_model.bin).

One table of `Link`s per family drives both directions, so import and export cannot drift apart.
Every tensor in a checkpoint is either mapped, or on a short list of known non-parameters
(buffers, tied aliases, BERT's next-sentence head); anything else is an error, and so is a missing
or mis-shaped tensor: nothing is left at random init without the caller being told.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.errors import CheckpointError

ParamPath = tuple[str | int, ...]

# Where each family keeps its backbone in the *For* classes (BertForSequenceClassification.bert).
BASE_PREFIX = {"bert": "bert.", "gpt2": "transformer.", "llama": "model."}
# Parameter groups: the backbone and the optional heads, by their root in a jaxlm model.
GROUP_ROOTS: dict[str, ParamPath] = {"backbone": ("backbone",), "lm_head": ("lm_head",),
                                     "mlm_head": ("mlm_head",), "head.pooler": ("head", "pooler"),
                                     "head.classifier": ("head", "classifier")}
_BASE_OWNED = ("backbone", "head.pooler")  # HF keeps BERT's pooler inside BertModel

# Tensors that are not parameters of the model (or duplicate one), with the reason.
_IGNORED = [(re.compile(r"(^|\.)position_ids$"), "position-id buffer"),
            (re.compile(r"(^|\.)attn\.(masked_)?bias$"), "GPT-2 causal-mask buffer"),
            (re.compile(r"rotary_emb\.inv_freq$"), "RoPE frequency buffer"),
            (re.compile(r"^cls\.seq_relationship\."), "BERT next-sentence head (unused)"),
            (re.compile(r"^cls\.predictions\.decoder\.bias$"), "alias of cls.predictions.bias")]


@dataclass(frozen=True)
class Link:
    """One Hugging Face tensor and the jaxlm parameter(s) it holds.

    op: "same" (identical layout), "t" (torch Linear [out, in] vs jaxlm kernel [in, out]) or
    "split" (one HF tensor is the jaxlm tensors concatenated on the last axis: GPT-2's c_attn).
    """

    hf: str  # name without the base-model prefix
    jax: tuple[ParamPath, ...]
    op: str = "same"
    group: str = "backbone"


def _linear(hf: str, path: ParamPath, group: str, bias: bool = True, op: str = "t") -> list[Link]:
    out = [Link(f"{hf}.weight", (path + ("kernel",),), op, group)]
    if bias:
        out.append(Link(f"{hf}.bias", (path + ("bias",),), "same", group))
    return out


def _norm(hf: str, path: ParamPath, group: str = "backbone", bias: bool = True) -> list[Link]:
    """A jaxlm `Norm` wraps the flax norm as `.norm`."""
    out = [Link(f"{hf}.weight", (path + ("norm", "scale"),), "same", group)]
    if bias:
        out.append(Link(f"{hf}.bias", (path + ("norm", "bias"),), "same", group))
    return out


def _bert_links(cfg: ModelConfig) -> list[Link]:
    E = ("backbone", "embeddings")
    links = [Link("embeddings.word_embeddings.weight", (E + ("token", "embedding"),)),
             Link("embeddings.position_embeddings.weight", (E + ("position", "embedding"),))]
    if cfg.type_vocab_size:
        links.append(Link("embeddings.token_type_embeddings.weight",
                          (E + ("token_type", "embedding"),)))
    links += _norm("embeddings.LayerNorm", E + ("norm",))
    for i in range(cfg.num_layers):
        h, p = f"encoder.layer.{i}.", ("backbone", "layers", i)
        for hf_name, jax_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            links += _linear(h + "attention.self." + hf_name, p + ("attn", jax_name), "backbone")
        links += _linear(h + "attention.output.dense", p + ("attn", "o_proj"), "backbone")
        links += _norm(h + "attention.output.LayerNorm", p + ("attn_norm",))
        links += _linear(h + "intermediate.dense", p + ("mlp", "up_proj"), "backbone")
        links += _linear(h + "output.dense", p + ("mlp", "down_proj"), "backbone")
        links += _norm(h + "output.LayerNorm", p + ("mlp_norm",))
    links += _linear("pooler.dense", ("head", "pooler"), "head.pooler")
    links += _linear("classifier", ("head", "classifier"), "head.classifier")
    links += _linear("cls.predictions.transform.dense", ("mlm_head", "transform"), "mlm_head")
    links += _norm("cls.predictions.transform.LayerNorm", ("mlm_head", "norm"), "mlm_head")
    links.append(Link("cls.predictions.bias", (("mlm_head", "bias"),), "same", "mlm_head"))
    if not cfg.tie_embeddings:
        links += _linear("cls.predictions.decoder", ("mlm_head", "proj"), "mlm_head", bias=False)
    return links


def _gpt2_links(cfg: ModelConfig) -> list[Link]:
    E = ("backbone", "embeddings")
    links = [Link("wte.weight", (E + ("token", "embedding"),)),
             Link("wpe.weight", (E + ("position", "embedding"),))]
    for i in range(cfg.num_layers):
        h, p = f"h.{i}.", ("backbone", "layers", i)
        a = p + ("attn",)
        links += _norm(h + "ln_1", p + ("attn_norm",))
        links.append(Link(h + "attn.c_attn.weight", (a + ("q_proj", "kernel"), a + ("k_proj", "kernel"),
                                                     a + ("v_proj", "kernel")), "split"))
        links.append(Link(h + "attn.c_attn.bias", (a + ("q_proj", "bias"), a + ("k_proj", "bias"),
                                                   a + ("v_proj", "bias")), "split"))
        links += _linear(h + "attn.c_proj", a + ("o_proj",), "backbone", op="same")  # Conv1D
        links += _norm(h + "ln_2", p + ("mlp_norm",))
        links += _linear(h + "mlp.c_fc", p + ("mlp", "up_proj"), "backbone", op="same")
        links += _linear(h + "mlp.c_proj", p + ("mlp", "down_proj"), "backbone", op="same")
    links += _norm("ln_f", ("backbone", "final_norm"))
    if not cfg.tie_embeddings:
        links += _linear("lm_head", ("lm_head", "proj"), "lm_head", bias=False)
    return links


def _llama_links(cfg: ModelConfig) -> list[Link]:
    links = [Link("embed_tokens.weight", (("backbone", "embeddings", "token", "embedding"),))]
    b = bool(cfg.use_bias)
    for i in range(cfg.num_layers):
        h, p = f"layers.{i}.", ("backbone", "layers", i)
        links += _norm(h + "input_layernorm", p + ("attn_norm",), bias=False)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            links += _linear(h + "self_attn." + name, p + ("attn", name), "backbone", bias=b)
        links += _norm(h + "post_attention_layernorm", p + ("mlp_norm",), bias=False)
        for name in ("gate_proj", "up_proj", "down_proj"):
            links += _linear(h + "mlp." + name, p + ("mlp", name), "backbone", bias=b)
    links += _norm("norm", ("backbone", "final_norm"), bias=False)
    if not cfg.tie_embeddings:
        links += _linear("lm_head", ("lm_head", "proj"), "lm_head", bias=False)
    return links


def family_links(cfg: ModelConfig) -> list[Link]:
    """Every tensor a checkpoint of this family and shape may hold, heads included."""
    cfg = cfg.resolved()
    return {"bert": _bert_links, "gpt2": _gpt2_links, "llama": _llama_links}[cfg.family](cfg)


def canonical_name(name: str, family: str) -> str:
    """Strip the base-model prefix and rename TF-era LayerNorm gamma/beta."""
    prefix = BASE_PREFIX[family]
    if name.startswith(prefix):
        name = name[len(prefix):]
    if "LayerNorm." in name:
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
    return name


def full_name(link: Link, family: str) -> str:
    """The name a *For* class (BertForSequenceClassification, ...) expects."""
    return BASE_PREFIX[family] + link.hf if link.group in _BASE_OWNED else link.hf


def _ignore_reason(name: str, cfg: ModelConfig) -> str | None:
    for pattern, reason in _IGNORED:
        if pattern.search(name):
            return reason
    if cfg.tie_embeddings and name in ("lm_head.weight", "cls.predictions.decoder.weight"):
        return "tied to the token embeddings"
    return None


def _few(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" ... and {len(names) - n} more" if len(names) > n else "")


def hf_shape(link: Link, shapes: dict[ParamPath, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape the Hugging Face tensor must have, from the jaxlm parameter shapes."""
    first = tuple(shapes[link.jax[0]])
    if link.op == "t":
        return first[::-1]
    if link.op == "split":
        return first[:-1] + (sum(shapes[p][-1] for p in link.jax),)
    return first


def to_jax(link: Link, arr: np.ndarray) -> list[np.ndarray]:
    """A Hugging Face tensor as the jaxlm array(s) of `link` (transposed or split as needed)."""
    if link.op == "t":
        return [arr.T]
    if link.op == "split":
        return list(np.split(arr, len(link.jax), axis=-1))
    return [arr]


def from_jax(link: Link, arrs: list[np.ndarray]) -> np.ndarray:
    """The Hugging Face tensor of `link` from its jaxlm array(s) (inverse of to_jax)."""
    if link.op == "t":
        return np.ascontiguousarray(arrs[0].T)
    if link.op == "split":
        return np.concatenate(arrs, axis=-1)
    return np.ascontiguousarray(arrs[0])


class TensorFiles:
    """Lazy, by-name access to a checkpoint's tensors: `model.safetensors`, sharded safetensors
    (`model.safetensors.index.json`), or `pytorch_model.bin` (read with torch, when installed)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._handles: dict[tuple[str, str], Any] = {}
        self._torch: dict[str, dict] = {}
        self.file_of: dict[str, str] = {}
        for single, index in (("model.safetensors", "model.safetensors.index.json"),
                              ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            if (directory / index).is_file():
                self.file_of = self._read_index(directory / index)
                break
            if (directory / single).is_file():
                self.file_of = {n: single for n in self._names_in(single)}
                break
        else:
            present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
            raise CheckpointError(
                f"'{directory}' holds no model weights (looked for model.safetensors, "
                "model.safetensors.index.json, pytorch_model.bin; found: "
                f"{present}). Point at a Hugging Face checkpoint folder saved with "
                "save_pretrained().", culprit=str(directory))

    def _read_index(self, path: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"'{path}' is not a valid shard index ({e!r}): it needs a "
                                  "'weight_map' from tensor names to files.",
                                  culprit=str(path)) from None
        missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise CheckpointError(f"The shard index '{path}' names files that are not there: "
                                  f"{_few(missing)}. Download the complete checkpoint.",
                                  culprit=str(path))
        return dict(weight_map)

    def _safe(self, file: str, framework: str = "np") -> Any:
        from safetensors import safe_open

        key = (file, framework)
        if key not in self._handles:
            try:
                self._handles[key] = safe_open(str(self.directory / file), framework=framework)
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"'{self.directory / file}' is not a readable safetensors "
                                      f"file ({e}).", culprit=str(self.directory / file)) from None
        return self._handles[key]

    def _bin(self, file: str) -> dict:
        if file not in self._torch:
            try:
                import torch
            except ImportError:
                raise CheckpointError(
                    f"'{self.directory / file}' is a PyTorch pickle; reading it needs torch (pip "
                    "install torch), or convert the checkpoint to safetensors first.",
                    culprit=str(self.directory / file)) from None
            try:
                self._torch[file] = torch.load(self.directory / file, map_location="cpu",
                                               weights_only=True, mmap=True)
            except Exception as e:  # pickle / zip errors, or non-tensor objects refused
                raise CheckpointError(f"'{self.directory / file}' could not be read safely as a "
                                      f"tensor state dict ({type(e).__name__}: {str(e)[:300]}).",
                                      culprit=str(self.directory / file)) from None
        return self._torch[file]

    def _names_in(self, file: str) -> list[str]:
        if file.endswith(".safetensors"):
            return list(self._safe(file).keys())
        return list(self._bin(file).keys())

    @property
    def names(self) -> list[str]:
        """Every tensor name in the checkpoint's files."""
        return list(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, read from the file header without loading it."""
        file = self.file_of[name]
        if file.endswith(".safetensors"):
            return tuple(self._safe(file).get_slice(name).get_shape())
        return tuple(self._bin(file)[name].shape)

    def get(self, name: str) -> np.ndarray:
        """The tensor as numpy (bfloat16 comes back as ml_dtypes.bfloat16)."""
        file = self.file_of[name]
        if file.endswith(".safetensors"):
            handle = self._safe(file)
            if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16
                return np.asarray(self._safe(file, "flax").get_tensor(name))
            return handle.get_tensor(name)
        t = self._bin(file)[name]
        return t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()


@dataclass
class ImportedTensors:
    """A checkpoint's tensors mapped to jaxlm parameter paths, with what was skipped and why."""
    flat: dict[ParamPath, np.ndarray]  # jaxlm parameter path -> array
    groups: list[str]  # parameter groups found complete (backbone first)
    ignored: dict[str, str]  # checkpoint name -> why it was skipped


def import_tensors(files: TensorFiles, cfg: ModelConfig,
                   shapes: dict[ParamPath, tuple[int, ...]], dtype: Any) -> ImportedTensors:
    """Map every tensor of `files` onto jaxlm paths, checking names and shapes first.

    `shapes` holds the jaxlm parameter shapes the config implies (backbone and every head).
    """
    cfg = cfg.resolved()
    where = str(files.directory)
    canon: dict[str, str] = {}
    for name in files.names:
        canon.setdefault(canonical_name(name, cfg.family), name)
    links = [l for l in family_links(cfg) if all(p in shapes for p in l.jax)]
    found = [l for l in links if l.hf in canon]
    problems: list[str] = []
    for group in GROUP_ROOTS:
        have = [l for l in found if l.group == group]
        lack = [l.hf for l in links if l.group == group and l.hf not in canon]
        if lack and (group == "backbone" or have):
            what = "the backbone" if group == "backbone" else f"the {group} head (incomplete)"
            problems.append(f"missing tensors of {what}: {_few(lack)}")
    used = {l.hf for l in found}
    ignored, unknown = {}, []
    for c, name in canon.items():
        if c in used:
            continue
        reason = _ignore_reason(c, cfg)
        if reason:
            ignored[name] = reason
        else:
            unknown.append(name)
    if unknown:
        problems.append(f"tensors that are not part of a '{cfg.family}' model jaxlm knows "
                        f"(unexpected names): {_few(unknown)}")
    bad_shapes = []
    for link in found:
        want, got = hf_shape(link, shapes), files.shape(canon[link.hf])
        if tuple(got) != tuple(want):
            bad_shapes.append(f"{canon[link.hf]} is {list(got)}, config.json implies {list(want)}")
    if bad_shapes:
        problems.append(f"shape mismatches: {_few(bad_shapes, 6)}")
    if problems:
        raise CheckpointError(
            f"The checkpoint in '{where}' does not match its config.json as a '{cfg.family}' "
            f"model: {'; '.join(problems)}. Use the config.json saved with these weights, or a "
            "complete, unmodified checkpoint.", culprit=where)
    flat: dict[ParamPath, np.ndarray] = {}
    for link in found:
        for path, arr in zip(link.jax, to_jax(link, files.get(canon[link.hf]))):
            flat[path] = np.asarray(arr, dtype=dtype)
    groups = [g for g in GROUP_ROOTS if any(l.group == g for l in found)]
    return ImportedTensors(flat=flat, groups=groups, ignored=ignored)


def export_tensors(flat: dict[ParamPath, np.ndarray], cfg: ModelConfig,
                   groups: list[str]) -> dict[str, np.ndarray]:
    """Hugging Face tensors (full names) for the given parameter groups of a jaxlm model."""
    cfg = cfg.resolved()
    links = [l for l in family_links(cfg) if l.group in groups]
    flat = dict(flat)
    if not cfg.use_bias and cfg.family in ("bert", "gpt2"):  # HF always has biases: write zeros
        for p in (p for l in links for p in l.jax):
            # a linear layer's bias is as wide as its kernel's output; a LayerNorm's as its scale
            like = flat.get(p[:-1] + ("kernel",), flat.get(p[:-1] + ("scale",)))
            if p[-1] == "bias" and p not in flat and like is not None:
                flat[p] = np.zeros(like.shape[-1:], like.dtype)
    missing = [".".join(map(str, p)) for l in links for p in l.jax if p not in flat]
    used = {p for l in links for p in l.jax}
    extra = [".".join(map(str, p)) for p in flat if p not in used]
    if missing or extra:
        parts = ([f"missing parameters {_few(missing)}"] if missing else []) + (
            [f"parameters with no Hugging Face counterpart {_few(extra)}"] if extra else [])
        raise CheckpointError(
            f"These '{cfg.family}' parameters do not form a Hugging Face {cfg.family} model: "
            f"{'; '.join(parts)}.", culprit="params")
    out = {full_name(l, cfg.family): from_jax(l, [np.asarray(flat[p]) for p in l.jax])
           for l in links}
    if cfg.family == "bert" and not cfg.type_vocab_size:  # BERT always adds a token-type row
        out[BASE_PREFIX["bert"] + "embeddings.token_type_embeddings.weight"] = np.zeros(
            (1, cfg.d_model), np.asarray(flat[("backbone", "embeddings", "token", "embedding")]).dtype)
    return out
