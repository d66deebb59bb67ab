"""Hugging Face `config.json` <-> jaxlm `ModelConfig`, for the BERT, GPT-2 and Llama families.

Only what jaxlm computes exactly is accepted: an option that would change the numbers (relative
position embeddings, scaled RoPE, cross-attention, ...) is an error naming the option, never a
silent approximation.
"""
from __future__ import annotations

from typing import Any

from jaxlm.config import FAMILY_PRESETS, ROPE_SCALING_KEYS, ModelConfig
from jaxlm.errors import CheckpointError, ConfigError

SUPPORTED = ("bert", "gpt2", "llama")

# Hugging Face activation names -> jaxlm (gelu_new / gelu_fast / gelu_pytorch_tanh are all the
# tanh approximation of GELU).
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

# The architecture each export writes, by (family, task).
EXPORT_ARCHITECTURES = {("bert", "classification"): "BertForSequenceClassification",
                        ("bert", "masked"): "BertForMaskedLM",
                        ("gpt2", "causal"): "GPT2LMHeadModel",
                        ("llama", "causal"): "LlamaForCausalLM"}


def _unsupported(where: str, problems: list[str]) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint config '{where}' uses options jaxlm cannot reproduce exactly: "
        f"{'; '.join(problems)}. Only these options block the import; use a checkpoint without "
        "them (or extend jaxlm.models for them).", culprit=where)


def _activation(name: Any, key: str, problems: list[str]) -> str:
    if name not in ACT_FROM_HF:
        problems.append(f"{key}={name!r} (supported: {', '.join(ACT_FROM_HF)})")
        return "gelu"
    return ACT_FROM_HF[name]


def rope_settings(hf: dict, problems: list[str]) -> tuple[float, dict]:
    """(RoPE base, jaxlm rope_scaling) from `rope_theta`/`rope_scaling` (transformers 4) or
    `rope_parameters` (transformers 5). Plain, linear and llama3 RoPE are exact in jaxlm; other
    variants (dynamic, yarn, longrope, partial rotary) are refused."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = params.get("rope_type") or params.get("type") or "default"
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        problems.append(f"partial_rotary_factor={params['partial_rotary_factor']}")
    if kind == "default":
        return theta, {}
    if kind not in ROPE_SCALING_KEYS:
        problems.append(f"rope_type={kind!r} (supported: default, {', '.join(ROPE_SCALING_KEYS)})")
        return theta, {}
    if kind == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    missing = [k for k in ROPE_SCALING_KEYS[kind] if params.get(k) is None]
    if missing:
        problems.append(f"rope_type={kind!r} without {', '.join(missing)}")
        return theta, {}
    return theta, {"rope_type": kind, **{k: params[k] for k in ROPE_SCALING_KEYS[kind]}}


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """The jaxlm ModelConfig (every family knob resolved) for a Hugging Face config dict; a
    missing size or a value of the wrong type is a CheckpointError naming the key and `where`."""
    _check_importable(hf, where)
    hf = checked_hf_config(hf, where)
    problems: list[str] = []
    cfg = _FROM_HF[hf["model_type"]](hf, problems)
    if problems:
        raise _unsupported(where, problems)
    try:
        return cfg.resolved()
    except ConfigError as e:
        raise CheckpointError(f"'{where}' describes a model jaxlm cannot build: {e} Fix the "
                              "checkpoint's config.json, or use the checkpoint as saved by "
                              "transformers.", culprit=where) from None


# The sizes each model type needs (positive integers), the optional ones (null: the family
# default), and the types of the other keys the readers use.
_REQUIRED_SIZES = {
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size"),
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
    "llama": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size")}
_OPTIONAL_SIZES = ("max_position_embeddings", "n_positions", "n_inner", "num_key_value_heads",
                   "head_dim")
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("type_vocab_size", "pad_token_id", "num_labels"), (int,)),
    **dict.fromkeys(("hidden_dropout_prob", "initializer_range", "layer_norm_eps", "resid_pdrop",
                     "layer_norm_epsilon", "attention_dropout", "rms_norm_eps", "rope_theta",
                     "partial_rotary_factor"), (int, float)),
    **dict.fromkeys(("tie_word_embeddings", "attention_bias", "mlp_bias", "scale_attn_weights",
                     "scale_attn_by_inverse_layer_idx", "add_cross_attention", "is_decoder"),
                    (bool,)),
    **dict.fromkeys(("hidden_act", "activation_function", "position_embedding_type"), (str,)),
    **dict.fromkeys(("rope_scaling", "rope_parameters", "id2label"), (dict,)),
    "architectures": (list,)}
_JSON_NAMES = {(int,): "an integer", (int, float): "a number", (bool,): "true or false",
               (str,): "a string", (dict,): "a JSON object", (list,): "a JSON list"}
_ROPE_NUMBERS = ("rope_theta", "partial_rotary_factor", "factor", "low_freq_factor",
                 "high_freq_factor", "original_max_position_embeddings")


def _type_error(where: str, key: str, value: Any, want: str) -> CheckpointError:
    return CheckpointError(
        f"'{where}' has {key}={value!r} ({type(value).__name__}), but {key} must be {want}. The "
        "file was edited by hand or written by other software: fix the value (numbers unquoted, "
        "e.g. \"hidden_size\": 768), or use the checkpoint as saved by transformers.",
        culprit=f"{where}: {key}")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def checked_hf_config(hf: dict, where: str) -> dict:
    """`hf` without its null values (a null is the default, as transformers reads it), after
    checking that each key the readers use has the right type and every size is a positive
    integer; a CheckpointError names the first bad key and `where`."""
    hf = {k: v for k, v in hf.items() if v is not None}
    missing = [k for k in _REQUIRED_SIZES[hf["model_type"]] if k not in hf]
    if missing:
        raise CheckpointError(
            f"'{where}' has no {', '.join(missing)}, which a {hf['model_type']} config needs to "
            "build the model. The file is incomplete: use the config.json saved with these "
            "weights.", culprit=f"{where}: {missing[0]}")
    for key in _REQUIRED_SIZES[hf["model_type"]] + _OPTIONAL_SIZES:
        if key in hf and not (_is(hf[key], (int,)) and hf[key] > 0):
            raise _type_error(where, key, hf[key], "a positive integer")
    for key, types in _KEY_TYPES.items():
        if key in hf and not _is(hf[key], types):
            raise _type_error(where, key, hf[key], _JSON_NAMES[types])
    for key in ("rope_scaling", "rope_parameters"):
        for name, value in (hf.get(key) or {}).items():
            if name in _ROPE_NUMBERS and value is not None and not _is(value, (int, float)):
                raise _type_error(where, f"{key}.{name}", value, "a number")
    if not all(isinstance(a, str) for a in hf.get("architectures", [])):
        raise _type_error(where, "architectures", hf["architectures"], "a list of class names")
    if not all(str(k).isdigit() for k in hf.get("id2label", {})):
        raise _type_error(where, "id2label", hf["id2label"], "a mapping of label ids (0, 1, ...) "
                          "to names")
    return hf


def _check_importable(hf: dict, where: str) -> None:
    """Refuse custom model code and model types jaxlm has no family for."""
    if hf.get("auto_map"):  # custom modeling code (trust_remote_code): never run, never guessed
        code = hf["auto_map"].values() if isinstance(hf["auto_map"], dict) else [hf["auto_map"]]
        raise CheckpointError(
            f"'{where}' declares custom model code (auto_map: "
            f"{', '.join(map(str, code))[:200]}); its weights need that code, "
            "which jaxlm never runs. Use a checkpoint saved with the standard transformers class "
            "(BERT, GPT-2 or Llama).", culprit=where)
    model_type = hf.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED:
        archs = hf.get("architectures") or []
        archs = ", ".join(map(str, archs if isinstance(archs, list) else [archs])) or "none listed"
        raise CheckpointError(
            f"'{where}' has model_type={model_type!r} (architectures: {archs}), which jaxlm cannot "
            f"import. Supported model types: {', '.join(SUPPORTED)} (BERT incl. MiniLM, GPT-2, "
            "Llama).", culprit=where)


def _bert_from_hf(hf: dict, problems: list[str]) -> ModelConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={hf['position_embedding_type']!r}")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        problems.append("is_decoder/add_cross_attention (a BERT decoder)")
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        family="bert", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        d_model=d, num_heads=h, head_dim=d // h, d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 512),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act", problems),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        pad_token_id=hf.get("pad_token_id") or 0)


def _gpt2_from_hf(hf: dict, problems: list[str]) -> ModelConfig:
    if not hf.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=false")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx=true")
    if hf.get("add_cross_attention"):
        problems.append("add_cross_attention=true")
    d = hf["n_embd"]
    return ModelConfig(
        family="gpt2", vocab_size=hf["vocab_size"], num_layers=hf["n_layer"], d_model=d,
        num_heads=hf["n_head"], head_dim=d // hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
        max_len=hf.get("n_positions", 1024), dropout=float(hf.get("resid_pdrop", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=_activation(hf.get("activation_function", "gelu_new"),
                               "activation_function", problems),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        pad_token_id=hf.get("pad_token_id") or 0)


def _llama_from_hf(hf: dict, problems: list[str]) -> ModelConfig:
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        problems.append("attention_bias != mlp_bias (jaxlm has one use_bias switch)")
    h = hf["num_attention_heads"]
    theta, scaling = rope_settings(hf, problems)
    return ModelConfig(
        family="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"], num_heads=h,
        num_kv_heads=hf.get("num_key_value_heads") or h,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // h,
        d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
        dropout=float(hf.get("attention_dropout", 0.0) or 0.0),
        init_std=float(hf.get("initializer_range", 0.02)),
        rope_theta=theta, rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation=_activation(hf.get("hidden_act", "silu"), "hidden_act", problems),
        use_bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pad_token_id=hf.get("pad_token_id") or 0)


# Each supported model_type's reader: (config.json, problems found so far) -> ModelConfig.
_FROM_HF = {"bert": _bert_from_hf, "gpt2": _gpt2_from_hf, "llama": _llama_from_hf}


def default_task(hf: dict) -> str:
    """The task a checkpoint was saved for, from its `architectures` (base models: the
    family's pretraining task)."""
    archs = " ".join(hf.get("architectures") or [])
    if "ForSequenceClassification" in archs:
        return "classification"
    if "ForMaskedLM" in archs or "ForPreTraining" in archs:
        return "masked"
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return "causal"
    return "masked" if hf.get("model_type") == "bert" else "causal"


def hf_num_labels(hf: dict) -> int | None:
    """The label count a classification config declares (None when it declares none)."""
    if hf.get("id2label"):
        return len(hf["id2label"])
    return hf.get("num_labels")


# Family knobs an export must match exactly (the Hugging Face class hard-codes them).
_FIXED = ("norm", "norm_position", "position", "mlp", "causal", "embed_norm", "final_norm")


def check_exportable(cfg: ModelConfig) -> None:
    """Refuse a jaxlm model that the family's Hugging Face class cannot represent exactly.

    Two differences are representable and allowed: no linear biases (GPT-2/BERT get zero
    biases) and no token types (BERT gets one zero token-type row)."""
    cfg = cfg.resolved()
    if cfg.family not in SUPPORTED:
        raise CheckpointError(f"model.family={cfg.family!r} has no Hugging Face export; "
                              f"supported: {', '.join(SUPPORTED)}.", culprit="model.family")
    preset = FAMILY_PRESETS[cfg.family]
    problems = [f"model.{k}={getattr(cfg, k)!r} (needs {preset[k]!r})" for k in _FIXED
                if getattr(cfg, k) != preset[k]]
    if cfg.activation not in ACT_TO_HF:
        problems.append(f"model.activation={cfg.activation!r}")
    if cfg.family in ("bert", "gpt2"):
        if cfg.num_kv_heads != cfg.num_heads:
            problems.append(f"model.num_kv_heads={cfg.num_kv_heads} (needs num_heads)")
        if cfg.head_dim * cfg.num_heads != cfg.d_model:
            problems.append(f"model.head_dim={cfg.head_dim} (needs d_model / num_heads)")
    if cfg.family != "bert" and cfg.type_vocab_size:
        problems.append(f"model.type_vocab_size={cfg.type_vocab_size} (needs 0)")
    if problems:
        raise CheckpointError(
            f"This '{cfg.family}' model cannot be written as a Hugging Face {cfg.family} "
            f"checkpoint without changing its outputs: {'; '.join(problems)}. Export a model "
            f"trained with the '{cfg.family}' family defaults.", culprit="model")


def config_to_hf(cfg: ModelConfig, task: str, *, num_labels: int = 0,
                 id2label: dict[int, str] | None = None, bos_id: int | None = None,
                 eos_id: int | None = None) -> dict:
    """A config.json dict that makes transformers build exactly this model."""
    cfg = cfg.resolved()
    check_exportable(cfg)
    arch = EXPORT_ARCHITECTURES.get((cfg.family, task))
    if arch is None:
        ok = ", ".join(f"{f}/{o}" for f, o in EXPORT_ARCHITECTURES)
        raise CheckpointError(
            f"A '{cfg.family}' model trained for '{task}' has no Hugging Face counterpart "
            f"that computes the same outputs (exportable family/task pairs: {ok}).",
            culprit="task")
    pad = cfg.pad_token_id if 0 <= cfg.pad_token_id < cfg.vocab_size else None
    common: dict[str, Any] = {"architectures": [arch], "vocab_size": cfg.vocab_size,
                              "initializer_range": cfg.init_std, "tie_word_embeddings":
                              bool(cfg.tie_embeddings), "pad_token_id": pad,
                              "bos_token_id": bos_id, "eos_token_id": eos_id, "dtype": cfg.param_dtype}
    if cfg.family == "bert":
        hf = {"model_type": "bert", "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
              "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
              "hidden_act": ACT_TO_HF[cfg.activation], "hidden_dropout_prob": cfg.dropout,
              "attention_probs_dropout_prob": cfg.dropout, "max_position_embeddings": cfg.max_len,
              # jaxlm allows no token types; BERT needs >= 1 (export writes one zero row).
              "type_vocab_size": max(cfg.type_vocab_size, 1), "layer_norm_eps": cfg.norm_eps,
              "position_embedding_type": "absolute", "is_decoder": False}
    elif cfg.family == "gpt2":
        hf = {"model_type": "gpt2", "n_embd": cfg.d_model, "n_layer": cfg.num_layers,
              "n_head": cfg.num_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_len,
              "activation_function": ACT_TO_HF[cfg.activation], "resid_pdrop": cfg.dropout,
              "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
              "layer_norm_epsilon": cfg.norm_eps, "scale_attn_weights": True,
              "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    else:
        hf = {"model_type": "llama", "hidden_size": cfg.d_model,
              "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
              "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
              "intermediate_size": cfg.d_ff, "hidden_act": ACT_TO_HF[cfg.activation],
              "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
              "rope_theta": cfg.rope_theta,
              "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                  **cfg.rope_scaling},
              "rope_scaling": dict(cfg.rope_scaling) or None,  # transformers 4 reads this
              "attention_bias": bool(cfg.use_bias), "mlp_bias": bool(cfg.use_bias),
              "attention_dropout": cfg.dropout}
    hf.update(common)
    if task == "classification":
        labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        hf["id2label"] = {str(k): v for k, v in labels.items()}
        hf["label2id"] = {v: int(k) for k, v in labels.items()}
        hf["num_labels"] = num_labels
    return hf
