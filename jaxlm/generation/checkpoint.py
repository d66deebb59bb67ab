"""Loading a causal LM for generation and evaluation: a pretrain run directory, a run written by
`jaxlm convert`, a Hugging Face folder or `hf:org/name` (through `jaxlm.interop.run_io`).

Only the parameters are read from a run's checkpoint: the optimizer state, often twice the size of
the model, never leaves the disk.
"""
from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import ConfigError
from jaxlm.models import build_model


def load_run(path: str | Path, *, step: int | None = None
             ) -> tuple[nnx.Module, TextTokenizer, ModelConfig]:
    """(CausalLM holding the checkpoint's parameters, its tokenizer, its resolved ModelConfig).

    step: a run's checkpoint step (default: the latest). The parameters sit on the default
    device; `Generator(model, mesh=...)` shards them like training.
    """
    from jaxlm.interop.params import apply_params
    from jaxlm.interop.run_io import load_params

    mcfg, params, tok, info = load_params(path, checkpoint="latest" if step is None else step)
    task = info.get("task")
    if task != "causal":
        raise ConfigError(f"'{path}' holds a '{task}' model; generation needs a causal language "
                          "model (a run trained with train.task=causal, or a GPT-2/Llama "
                          "checkpoint).", culprit=str(path))
    with jax.default_device(jax.devices()[0]):
        model = build_model(mcfg, "causal")
    apply_params(model, params)
    return model, tok, model.backbone.cfg
