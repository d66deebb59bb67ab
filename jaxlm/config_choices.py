"""The closed sets config keys take: model families (with the knobs each presets), rotary scaling
variants, and the allowed values of every choice key. Re-exported by `jaxlm.config`."""
from __future__ import annotations

import sys
from typing import Any

# Model families: the knobs that differ between GPT-2, Llama and BERT. A field left at None in the
# model section takes the value of its family here.
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(norm="layernorm", norm_position="pre", position="learned", mlp="gelu",
                 activation="gelu_tanh", use_bias=True, tie_embeddings=True, type_vocab_size=0,
                 causal=True, embed_norm=False, final_norm=True, norm_eps=1e-5),
    "llama": dict(norm="rmsnorm", norm_position="pre", position="rope", mlp="swiglu",
                  activation="silu", use_bias=False, tie_embeddings=False, type_vocab_size=0,
                  causal=True, embed_norm=False, final_norm=True, norm_eps=1e-5),
    "bert": dict(norm="layernorm", norm_position="post", position="learned", mlp="gelu",
                 activation="gelu", use_bias=True, tie_embeddings=True, type_vocab_size=2,
                 causal=False, embed_norm=True, final_norm=False, norm_eps=1e-12),
}

# Rotary scaling variants (model.rope_scaling.rope_type) and the keys each needs.
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.family": tuple(FAMILY_PRESETS),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.norm_position": ("pre", "post"),
    "model.position": ("learned", "rope", "none"),
    "model.mlp": ("gelu", "swiglu"),
    "model.activation": ("gelu", "gelu_tanh", "silu", "relu"),
    "model.remat": ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"),
    "model.attention_impl": ("auto", "xla", "blockwise", "cudnn", "splash"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "adafactor", "lion", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "train.task": ("causal", "masked", "classification", "generative"),
    "train.on_nonfinite": ("stop", "skip"),
    "finetune.pooling": ("first", "mean", "last"),
    "distributed.initialize": ("auto", "always", "never"),
    "finetune.best_mode": ("", "max", "min"),
    "generative.chat_template": ("auto", "none"),
    "generative.overlong": ("error", "truncate_left", "skip"),
    "generative.validate_with": ("loss", "generate"),
    "data.sampling": ("random_windows", "packed"),
    "data.documents": ("file", "blank_line", "line"),
    "data.on_invalid": ("", "report", "error"),
    "data.packing": ("concat", "first_fit"),
    "logging.trackers": ("tensorboard", "jsonl", "wandb", "mlflow"),
    "logging.wandb.mode": ("auto", "online", "offline", "disabled"),
}


def choices(path: str) -> tuple[str, ...]:
    """The values config key `path` accepts. `model.attention_impl`: the built-in attention
    implementations plus those registered with `jaxlm.models.attention.register_attention`."""
    if path == "model.attention_impl":
        attention = sys.modules.get("jaxlm.models.attention")  # registering imports it
        if attention is not None:
            return attention.attention_names()
    return CHOICES[path]
