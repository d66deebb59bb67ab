"""A LoRA run's adapters in the PEFT layout: `jaxlm export --adapters-only`.

Writes `adapter_config.json` and `adapter_model.safetensors` as `peft` saves them, so
`PeftModel.from_pretrained(base, DIR)` loads them onto the Hugging Face export of the base (the
checkpoint the run started from). Each adapted layer's A [in, r] and B [r, out] become PEFT's
`lora_A.weight` [r, in] and `lora_B.weight` [out, r] under the Hugging Face name of the layer; the
trained heads (a classifier and BERT's pooler; a causal LM's own head with train_lm_head) are
written whole as PEFT's `modules_to_save`.
"""
from __future__ import annotations

import json
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


def _adapted(model: nnx.Module) -> list[tuple[tuple, LoRALinear]]:
    return [(tuple(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, LoRALinear)]


def _layer_names(run: LoadedRun) -> dict[tuple, str]:
    """{jaxlm kernel path: Hugging Face module name} of the layers PEFT can adapt."""
    if run.model_cfg.family == "gpt2":
        raise CheckpointError(
            "GPT-2 keeps its q/k/v projections fused in one Conv1D (c_attn), which PEFT adapts "
            "as a whole, so these adapters have no PEFT layout. Export the merged model instead "
            "(jaxlm export without --adapters-only).", culprit="--adapters-only")
    return {l.jax[0]: full_name(l, run.model_cfg.family).removesuffix(".weight")
            for l in family_links(run.model_cfg) if l.op == "t" and len(l.jax) == 1}


def adapter_tensors(run: LoadedRun) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """(PEFT tensors, adapted module names, the adapters' rank / alpha / dropout)."""
    layers = _adapted(run.model)
    if not layers:
        raise CheckpointError("This run has no LoRA adapters (finetune.lora.rank was 0): export "
                              "the model itself, without --adapters-only.",
                              culprit="--adapters-only")
    names = _layer_names(run)
    tensors, modules = {}, []
    for path, layer in layers:
        name = names.get(path + ("kernel",))
        if name is None:
            raise CheckpointError(f"The adapted layer {'.'.join(map(str, path))} has no Hugging "
                                  "Face counterpart PEFT could adapt.", culprit="--adapters-only")
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(
            np.asarray(layer.lora.lora_a[...]).T)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(
            np.asarray(layer.lora.lora_b[...]).T)
        modules.append(name)
    lora = layers[0][1].lora
    rank = int(lora.lora_a.shape[1])
    return tensors, modules, {"r": rank, "lora_alpha": float(lora.scale * rank),
                              "lora_dropout": float(lora.dropout)}


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
              "fan_in_fan_out": False, "base_model_name_or_path": base,
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
