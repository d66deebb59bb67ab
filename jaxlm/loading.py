"""Loading a trained model from wherever it lives: a jaxlm run directory (`jaxlm.run.Run`), a
Hugging Face folder or `hf:org/name` (`jaxlm.interop.import_hf`).

    lm = load_model("runs/shakespeare_char")        # or "path/to/hf_folder", "hf:gpt2"
    generate(lm.model, lm.tokenizer, "ROMEO:", max_new_tokens=100)

`load_model` gives a `LoadedRun` (model, its config, tokenizer, task, head); `load_params` gives
the parameters alone with every head the source holds (fine-tuning starts from a backbone). Run
checkpoints are read through orbax's metadata, restoring only the parameters onto the host.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxlm.errors import CheckpointError
from jaxlm.interop.hf import HUB_PREFIX
from jaxlm.run import LoadedRun, Run


def _source(source: str | Path, checkpoint: str | int) -> tuple[str, Any, str | int]:
    """("run", Run, checkpoint) or ("hf", folder or hf:id, checkpoint) for a source: a run
    directory (RUN_DIR/checkpoints/STEP picks a step), a Hugging Face folder or hf:org/name."""
    s = str(source)
    if s.startswith(HUB_PREFIX):
        return "hf", s, checkpoint
    p = Path(s).expanduser()
    if p.name.isdigit() and p.parent.name == "checkpoints":
        p, checkpoint = p.parent.parent, int(p.name)
    if (p / "config.yaml").is_file():  # a run (Run reports what is missing or damaged)
        return "run", Run(p), checkpoint
    if (p / "config.json").is_file():
        return "hf", p, checkpoint
    raise CheckpointError(f"'{p}' is neither a jaxlm run directory (config.yaml + checkpoints/) "
                          "nor a Hugging Face checkpoint folder (config.json). Pass one of those, "
                          "or hf:org/name.", culprit=str(p))


def load_model(source: str | Path, *, checkpoint: str | int = "best") -> LoadedRun:
    """The model of a run directory (`Run(source).load(checkpoint)`: "best", "latest" or a step),
    a Hugging Face folder or hf:org/name (built for the task the checkpoint was saved for)."""
    kind, where, checkpoint = _source(source, checkpoint)
    if kind == "run":
        return where.load(checkpoint)
    return _load_hf(where)


def _load_hf(where: str | Path) -> LoadedRun:
    """A Hugging Face checkpoint as the model of the task it was saved for."""
    import jax
    from flax import nnx

    from jaxlm.interop import import_hf
    from jaxlm.models import build_model
    from jaxlm.params import apply_params, model_kwargs, to_flat

    cfg, params, tok, info = import_hf(where)
    task = info["task"]
    head = model_kwargs(cfg, to_flat(params), task, info.get("pooling"))
    with nnx.use_eager_sharding(False), jax.default_device(jax.devices()[0]):
        model = build_model(cfg, task, **head)
    fresh, _ = apply_params(model, params)
    if fresh:
        raise CheckpointError(
            f"The Hugging Face checkpoint '{info['source']}' has no {', '.join(fresh[:4])}"
            f"{' ...' if len(fresh) > 4 else ''}: it holds no complete {task} model. Load a "
            f"checkpoint saved with its {task} head, or `jaxlm convert` it (which initialises the "
            "missing head) and fine-tune.", culprit=str(info["source"]))
    if task == "classification" and info.get("id2label"):
        head["class_names"] = [str(info["id2label"][i]) for i in range(head["num_labels"])]
    return LoadedRun(Path(info["source"]), None, cfg.resolved(), task, head, tok, model, "hf")


def load_params(source: str | Path, *, checkpoint: str | int = "latest"
                ) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(ModelConfig, params nnx.State, tokenizer, info) of a run directory, a Hugging Face folder
    or hf:org/name: the parameters alone, every head the source holds included.

    checkpoint, for run directories: "latest", "best" (a fine-tuning run's best validation
    checkpoint) or a step. info: source, task, heads, num_labels, id2label, pooler, pooling, and
    "checkpoint" for runs. A LoRA run's adapters are merged into its weights (so fine-tuning can
    start from it).
    """
    kind, where, checkpoint = _source(source, checkpoint)
    if kind == "hf":
        from jaxlm.interop import import_hf
        return import_hf(where)
    from flax import nnx

    from jaxlm.models.lora import merge_lora

    loaded = where.load(checkpoint)
    params = nnx.state(merge_lora(loaded.model), nnx.Param)  # a LoRA run: W + scale * A @ B
    head = loaded.head
    names = head.get("class_names")
    roots = {p[0] for p, _ in nnx.to_flat_state(params)}
    heads = sorted(roots - {"head"}) + (["head.pooler"] if head.get("pooler") else []) + (
        ["head.classifier"] if loaded.task == "classification" else [])
    info = {"source": str(where.path), "checkpoint": loaded.checkpoint, "task": loaded.task,
            "heads": heads, "num_labels": head.get("num_labels"),
            "id2label": dict(enumerate(names)) if names else None,
            "pooler": bool(head.get("pooler", False)), "pooling": head.get("pooling")}
    return loaded.model_cfg, params, loaded.tokenizer, info
