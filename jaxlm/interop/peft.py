"""A LoRA run's adapters in the PEFT layout: `jaxlm export --adapters-only`.

Writes `adapter_config.json` and `adapter_model.safetensors` as `peft` saves them, so
`PeftModel.from_pretrained(base, DIR)` loads them onto the Hugging Face export of the base (the
checkpoint the run started from). Each adapted layer's A [in, r] and B [r, out] become PEFT's
`lora_A.weight` [r, in] and `lora_B.weight` [out, r] under the Hugging Face name of the layer
(GPT-2's fused c_attn: one adapter of the adapted q/k/v parts' summed rank, declared in
rank_pattern, that computes exactly their sum); the trained heads (a classifier and BERT's
pooler; a causal LM's own head with train_lm_head) are written whole as PEFT's
`modules_to_save`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxlm.errors import CheckpointError
from jaxlm.interop.hf import _empty_folder, _save_safetensors, _select, _tokenizer_config
from jaxlm.interop.hf_weights import family_links, full_name, export_tensors
from jaxlm.models.lora import LoRALinear
from jaxlm.params import to_flat
from jaxlm.run import LoadedRun

PREFIX = "base_model.model."
# jaxlm head groups -> (their Hugging Face module names, PEFT task type)
_HEADS = {"classification": (["head.pooler", "head.classifier"], ["pooler", "classifier"],
                             "SEQ_CLS"),
          "causal": (["lm_head"], ["lm_head"], "CAUSAL_LM"),
          "generative": (["lm_head"], ["lm_head"], "CAUSAL_LM")}


def _adapted(model: nnx.Module) -> dict[tuple, LoRALinear]:
    return {tuple(p) + ("kernel",): n for p, n in nnx.iter_graph(model)
            if isinstance(n, LoRALinear)}


def _modules(run: LoadedRun) -> list[tuple[str, tuple[tuple, ...], bool]]:
    """(Hugging Face module name, the jaxlm kernels it holds in order, Conv1D layout) of every
    layer PEFT can adapt: a torch Linear holds one kernel transposed; GPT-2's Conv1D layers hold
    theirs as they are, c_attn the q, k and v kernels side by side."""
    family = run.model_cfg.family
    return [(full_name(l, family).removesuffix(".weight"), l.jax, l.op != "t")
            for l in family_links(run.model_cfg) if l.jax[0][-1] == "kernel"]


def _fused(parts: list[tuple[LoRALinear | None, int]]) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's (lora_A [R, in], lora_B [out, R]) of one module whose output is the parts' outputs
    side by side; parts: (the part's adapter or None, its output width). The adapted parts' A
    stack to rank R = the sum of their ranks, and B is block diagonal, so x A B gives each
    adapted part its own x A_i B_i and the others zero: the same sum, exactly."""
    A = np.concatenate([np.asarray(layer.lora.lora_a[...]).T for layer, _ in parts
                        if layer is not None])
    B = np.zeros((sum(w for _, w in parts), A.shape[0]), A.dtype)
    row = col = 0
    for layer, width in parts:
        if layer is not None:
            b = np.asarray(layer.lora.lora_b[...]).T  # [width, r]
            B[row:row + width, col:col + b.shape[1]] = b
            col += b.shape[1]
        row += width
    return np.ascontiguousarray(A), B


def adapter_tensors(run: LoadedRun) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """(PEFT tensors, adapted module names, the adapters' rank / alpha / dropout, with the
    rank_pattern / alpha_pattern of fused modules whose rank is a multiple of it)."""
    adapted = _adapted(run.model)
    if not adapted:
        raise CheckpointError("This run has no LoRA adapters (finetune.lora.rank was 0): export "
                              "the model itself, without --adapters-only.",
                              culprit="--adapters-only")
    flat = to_flat(nnx.state(run.model, nnx.Param))
    lora = next(iter(adapted.values())).lora
    rank, scale = int(lora.lora_a.shape[1]), float(lora.scale)
    tensors, modules, ranks, exported, fan_in_fan_out = {}, [], {}, set(), False
    for name, kernels, conv1d in _modules(run):
        if not any(k in adapted for k in kernels):  # (heads this model lacks among them)
            continue
        parts = [(adapted.get(k), int(flat[k].shape[-1])) for k in kernels]
        A, B = _fused(parts)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B
        modules.append(name)
        exported.update(k for k in kernels if k in adapted)
        if A.shape[0] != rank:
            ranks[re.escape(name)] = int(A.shape[0])
        fan_in_fan_out |= conv1d
    missing = sorted(".".join(map(str, k[:-1])) for k in set(adapted) - exported)
    if missing:
        raise CheckpointError(f"The adapted layer {missing[0]} has no Hugging Face counterpart "
                              "PEFT could adapt.", culprit="--adapters-only")
    return tensors, modules, {"r": rank, "lora_alpha": scale * rank,
                              "lora_dropout": float(lora.dropout),
                              "fan_in_fan_out": fan_in_fan_out,
                              "rank_pattern": ranks,
                              "alpha_pattern": {k: scale * r for k, r in ranks.items()}}


def _head_tensors(run: LoadedRun, flat: dict) -> tuple[dict[str, np.ndarray], list[str], str]:
    groups, modules, task_type = _HEADS.get(run.task, ([], [], "FEATURE_EXTRACTION"))
    groups = [g for g in groups if any(p[:len(g.split("."))] == tuple(g.split("."))
                                       for p in flat)]
    if run.task != "classification":  # a causal LM's head is saved only when it was trained
        groups = [g for g in groups if _trained_lm_head(run)]
    modules = [m for g, m in zip(_HEADS.get(run.task, ([], []))[0], modules) if g in groups]
    if not groups:
        return {}, [], task_type
    out = export_tensors(_select(flat, groups), run.model_cfg, groups)
    return {PREFIX + k: v for k, v in out.items()}, modules, task_type


def _trained_lm_head(run: LoadedRun) -> bool:
    spec_path = Path(run.run_dir) / "model.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    return bool((spec.get("lora") or {}).get("train_lm_head"))


def export_adapters(run: LoadedRun, out: str | Path, *, base: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Write the PEFT adapter folder of a loaded LoRA run; `base`: the base model's name or
    folder recorded in adapter_config.json (the run's finetune.init_from by default)."""
    tensors, modules, settings = adapter_tensors(run)
    flat = to_flat(nnx.state(run.model, nnx.Param))
    heads, to_save, task_type = _head_tensors(run, flat)
    if base is None and run.cfg is not None:
        base = run.cfg.finetune.init_from.removeprefix("hf:") or None
    config = {"peft_type": "LORA", "task_type": task_type, **settings,
              "target_modules": modules, "modules_to_save": to_save or None, "bias": "none",
              "base_model_name_or_path": base,
              "inference_mode": True, "init_lora_weights": True}
    path = _empty_folder(Path(out), overwrite)
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save_safetensors({**tensors, **heads}, path / "adapter_model.safetensors")
    if run.tokenizer is not None:
        run.tokenizer.save(path / "tokenizer.json")
        (path / "tokenizer_config.json").write_text(json.dumps(
            _tokenizer_config(run.tokenizer, run.model_cfg.max_len), indent=2) + "\n")
    return {"out": str(path), "adapted": len(modules), "modules_to_save": to_save,
            "task_type": task_type, "checkpoint": run.checkpoint, **settings}
