"""Typed experiment configs: YAML files plus `--set a.b=c` overrides, validated with clear errors.

A config is a tree of dataclasses. Every key a user can write is a field here, so an unknown key is
caught (with the closest valid key suggested) and a value of the wrong type is named before any work
starts.

This module holds the section dataclasses and the entry points (`load_config`, `config_from_dict`,
`save_config`); the tables of choices and family presets live in `jaxlm.config_choices`, the value
checks in `jaxlm.config_checks`, YAML reading and overrides in `jaxlm.config_loading`, the
`logging:` section in `jaxlm.config_logging`. Their public names are all importable from here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jaxlm.config_checks import (DEPRECATED_KEYS, _noticed, bad_key, build_section,  # noqa: F401
                                 check_fields, check_folder_key, deprecation_notice,
                                 require_positive,
                                 template_fields)
from jaxlm.config_choices import CHOICES, FAMILY_PRESETS, ROPE_SCALING_KEYS, choices  # noqa: F401
from jaxlm.config_checks import _Section  # noqa: F401  (every section's validate())
from jaxlm.config_logging import LoggingConfig, MlflowConfig, WandbConfig  # noqa: F401
from jaxlm.config_loading import (load_yaml, migrate_raw, parse_override,  # noqa: F401
                                  with_overrides)


@dataclass
class ModelConfig(_Section):
    """Transformer shape and family; None fields come from `FAMILY_PRESETS[family]`.

    Built in Python or read from YAML, it is validated the same way (`validate()`, which
    `resolved()` and `jaxlm.build_model` call): a bad value raises a ConfigError naming the key.
    """

    _section = "model"

    family: str = "gpt2"
    vocab_size: int = 0  # 0: taken from the tokenizer
    num_layers: int = 4
    d_model: int = 128
    num_heads: int = 4
    num_kv_heads: int = 0  # 0: same as num_heads (no grouped-query attention)
    head_dim: int = 0  # 0: d_model // num_heads
    d_ff: int = 0  # 0: 4 * d_model
    max_len: int = 1024
    dropout: float = 0.0
    init_std: float = 0.02
    rope_theta: float = 10000.0
    # {}: plain RoPE; else Hugging Face rope_parameters keys, e.g. {"rope_type": "llama3",
    # "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    # "original_max_position_embeddings": 8192} (see ROPE_SCALING_KEYS)
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "auto"
    norm: str | None = None
    norm_position: str | None = None
    position: str | None = None
    mlp: str | None = None
    activation: str | None = None
    use_bias: bool | None = None
    tie_embeddings: bool | None = None
    type_vocab_size: int | None = None
    causal: bool | None = None
    embed_norm: bool | None = None
    final_norm: bool | None = None
    norm_eps: float | None = None
    pad_token_id: int = 0

    def resolved(self) -> "ModelConfig":
        """A validated copy with family defaults and derived sizes filled in."""
        self.validate()
        return self._resolve()

    def _check_rules(self) -> None:
        require_positive(self, "model", ("num_layers", "d_model", "num_heads", "max_len"))
        require_positive(self, "model", ("vocab_size", "num_kv_heads", "head_dim", "d_ff",
                                          "init_std"), zero_ok=True)
        require_positive(self, "model", ("rope_theta",))
        m = self._resolve()
        if m.num_heads % m.num_kv_heads:
            bad_key("model.num_kv_heads", f"{m.num_kv_heads} must divide model.num_heads="
                    f"{m.num_heads}.")
        if self.head_dim == 0 and m.d_model % m.num_heads:
            bad_key("model.num_heads", f"{m.num_heads} must divide model.d_model={m.d_model} "
                    "(or set model.head_dim explicitly).")
        if m.position == "rope" and m.head_dim % 2:
            bad_key("model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}.")
        if m.rope_scaling:
            kind = m.rope_scaling.get("rope_type")
            if kind not in ROPE_SCALING_KEYS:
                bad_key("model.rope_scaling", "rope_type must be one of "
                        f"{', '.join(ROPE_SCALING_KEYS)}, got {kind!r}.")
            missing = [k for k in ROPE_SCALING_KEYS[kind] if k not in m.rope_scaling]
            if missing:
                bad_key("model.rope_scaling", f"'{kind}' scaling needs {', '.join(missing)}.")
        if not 0.0 <= m.dropout < 1.0:
            bad_key("model.dropout", f"must be in [0, 1), got {m.dropout}.")
        if m.norm_eps is not None and m.norm_eps <= 0:
            bad_key("model.norm_eps", f"must be positive, got {m.norm_eps}.")

    def _resolve(self) -> "ModelConfig":
        preset = FAMILY_PRESETS[self.family]
        updates = {k: v for k, v in preset.items() if getattr(self, k) is None}
        out = dataclasses.replace(self, **updates)
        if out.num_kv_heads == 0:
            out.num_kv_heads = out.num_heads
        if out.head_dim == 0:
            out.head_dim = out.d_model // out.num_heads
        if out.d_ff == 0:
            out.d_ff = 4 * out.d_model
        return out


@dataclass
class MeshConfig(_Section):
    """Device mesh sizes (-1: the rest of the devices) and logical-axis rule overrides."""

    _section = "mesh"

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    num_devices: int = 0  # 0: all devices; N: the first N (tests, sharing a host)
    rules: dict[str, Any] = field(default_factory=dict)

    def _check_rules(self) -> None:
        for key in ("data", "fsdp", "tensor"):
            v = getattr(self, key)
            if v == 0 or v < -1:
                bad_key(f"mesh.{key}", f"must be a positive size or -1 (the rest of the devices), "
                        f"got {v}.")
        require_positive(self, "mesh", ("num_devices",), zero_ok=True)
        if self.rules:
            from jaxlm.sharding import check_rules
            check_rules(self.rules, "mesh.rules")


@dataclass
class OptimConfig(_Section):
    """Optimizer and learning-rate schedule (optax)."""

    _section = "optim"

    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    decay_steps: int = 0  # 0: train.steps
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_embeddings: bool = False  # nanoGPT decays every matrix, embeddings included
    momentum: float = 0.9
    grad_clip: float = 1.0  # 0: no clipping

    def _check_rules(self) -> None:
        require_positive(self, "optim", ("lr", "min_lr", "warmup_steps", "decay_steps", "eps",
                                          "weight_decay", "grad_clip"), zero_ok=True)
        if self.min_lr > self.lr:
            bad_key("optim.min_lr", f"{self.min_lr} exceeds optim.lr={self.lr}: the schedule "
                    "decays from optim.lr down to optim.min_lr.")
        for key in ("b1", "b2", "momentum"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad_key(f"optim.{key}", f"must be in [0, 1), got {getattr(self, key)}.")


@dataclass
class TokenizerConfig(_Section):
    """Which tokenizer to train (char, bpe, ...) or load (`path` to a tokenizer.json)."""

    _section = "data.tokenizer"

    kind: str = "char"
    vocab_size: int = 0
    path: str = ""

    def _check_rules(self) -> None:
        require_positive(self, "data.tokenizer", ("vocab_size",), zero_ok=True)


@dataclass
class DataConfig(_Section):
    """Where the text comes from and how it becomes fixed-length rows."""

    _section = "data"

    train: str = ""  # a dataset spec: tfds:NAME[/CONFIG][:SPLIT], text:, labeled:, tsv:, csv:, jsonl:
    validation: str = ""  # empty: the spec's validation split, else the last `val_fraction`
    test: str = ""  # optional held-out split (classification evaluation)
    val_fraction: float = 0.1
    encoding: str = "utf-8"
    tfds_data_dir: str = ""  # empty: $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)
    documents: str = "file"  # plain text: the whole file, each blank-line block, or each line
    text_field: str = ""  # tsv/csv/jsonl column or TFDS feature with the text (empty: found)
    label_field: str = ""  # the same for the label (empty: 'label' when present)
    labels: list[str | int] = field(default_factory=list)  # declared label set (empty: from train)
    # invalid records (empty lines, missing or undeclared labels; for generative fine-tuning, a
    # field the templates name or an empty target): count and skip (report) or stop (error);
    # "": the task's default, report for pretraining and classification, error for generative
    on_invalid: str = ""
    seq_len: int = 64
    sampling: str = "random_windows"
    packing: str = "concat"  # sampling=packed: concat-then-split or first-fit bins (grain)
    mask_prob: float = 0.15  # task=masked: fraction of tokens scored (80/10/10 replaced)
    whole_word_mask: bool = False
    length_buckets: list[int] = field(default_factory=list)  # classification (empty: fitted)
    # classification: several short examples share a row (segment ids keep them apart, every
    # example's logits are unchanged), so a step costs the tokens its examples hold, not batch x
    # the longest; false (or length_buckets given): one example per row, padded to a bucket
    pack_examples: bool = True
    prefetch: int = 4  # batches prepared ahead in a background thread
    # folder of tokenised text files, reused across runs (jaxlm.data.token_store); empty:
    # $JAXLM_TOKEN_CACHE, else ~/.cache/jaxlm/tokens
    token_cache: str = ""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @property
    def packs_examples(self) -> bool:
        """Whether classification rows are packed: pack_examples, unless length_buckets asks for
        one example per row padded to its buckets."""
        return self.pack_examples and not self.length_buckets

    def _check_rules(self) -> None:
        self.tokenizer.validate()
        require_positive(self, "data", ("seq_len",))
        require_positive(self, "data", ("prefetch",), zero_ok=True)
        check_folder_key("data.token_cache", self.token_cache)
        if not 0.0 < self.val_fraction < 1.0 and not self.validation:
            bad_key("data.val_fraction", f"must be in (0, 1), got {self.val_fraction}.")
        if not 0.0 <= self.mask_prob <= 1.0:
            bad_key("data.mask_prob", f"must be in [0, 1], got {self.mask_prob}.")
        for i, n in enumerate(self.length_buckets):
            if not 0 < n <= self.seq_len:
                bad_key(f"data.length_buckets[{i}]", f"must be a length in [1, data.seq_len="
                        f"{self.seq_len}] (rows are cut to seq_len), got {n}.")


@dataclass
class TrainConfig(_Section):
    """The loop: how long, how big, how often to evaluate, log and checkpoint."""

    _section = "train"

    task: str = "causal"  # what is trained: causal LM, masked LM, or sequence classification
    steps: int = 1000
    batch_size: int = 12  # global, across all devices and hosts
    grad_accum: int = 1
    seed: int = 0
    eval_every: int = 250
    # validation during training: N batches of the split; -1: all of it; 0 (auto): a language
    # model scores a fixed sample costing about 1/30 of the training between two validations and
    # the whole split once at the end; fine-tuning scores the whole (small) dev split
    eval_batches: int = 0
    eval_batch_size: int = 0  # 0: same as batch_size
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # NaN/Inf loss or gradients: the update is never applied; "stop" then saves a checkpoint and
    # exits (code 3) naming the step, "skip" carries on and counts them (metric nonfinite_steps).
    on_nonfinite: str = "stop"
    preemption_check_every: int = 10  # multi-host: steps between agreeing on SIGTERM/SIGINT
    # train steps per call of the compiled step (a loop on the device), so that the host's work
    # per step is paid once per call; calls end where logging, validation or a checkpoint is
    # due. 0 (auto): 16 for a task whose batches have one shape (language models, packed
    # generative rows), else 1
    steps_per_call: int = 0

    def _check_rules(self) -> None:
        require_positive(self, "train", ("steps", "batch_size", "grad_accum", "log_every",
                                          "checkpoint_every", "keep_checkpoints",
                                          "preemption_check_every"))
        require_positive(self, "train", ("eval_every", "eval_batch_size", "steps_per_call"),
                         zero_ok=True)
        if self.eval_batches < -1:
            bad_key("train.eval_batches", f"must be a number of batches, 0 (auto) or -1 (the "
                    f"whole validation split), got {self.eval_batches}.")
        if not 0 <= self.seed < 2**32:
            bad_key("train.seed", f"must be in [0, 2**32 - 1], got {self.seed}.")
        if self.batch_size % self.grad_accum:
            bad_key("train.grad_accum", f"{self.grad_accum} must divide train.batch_size="
                    f"{self.batch_size} (each micro-batch is batch_size / grad_accum rows).")

    @property
    def eval_rows(self) -> int:
        """The evaluation batch size: eval_batch_size, else batch_size."""
        return self.eval_batch_size or self.batch_size

    @property
    def objective(self) -> str:
        """Deprecated name of `task`."""
        deprecation_notice("train.objective", "train.task")
        return self.task

    @objective.setter
    def objective(self, value: str) -> None:
        deprecation_notice("train.objective", "train.task")
        self.task = value


@dataclass
class LoRAConfig(_Section):
    """Low-rank adapters (`jaxlm.models.lora`): the matched dense layers stay frozen and learn
    W + (alpha / rank) * A @ B; only the adapters and the task head are trained."""

    _section = "finetune.lora"

    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 16.0  # the update is scaled by alpha / rank, as in PEFT
    dropout: float = 0.0  # on the adapters' input
    # groups "attention" (q/k/v/o projections) and "mlp", or fnmatch globs over module paths,
    # e.g. "backbone.layers.*.attn.[qv]_proj"
    targets: list[str] = field(default_factory=lambda: ["attention"])
    train_lm_head: bool = False  # also train a causal LM's own (untied) output projection

    def _check_rules(self) -> None:
        if self.rank < 0:
            bad_key("finetune.lora.rank", f"must be a positive adapter rank (e.g. 8), or 0 to "
                    f"fine-tune without LoRA; got {self.rank}.")
        require_positive(self, "finetune.lora", ("alpha",))
        if not 0.0 <= self.dropout < 1.0:
            bad_key("finetune.lora.dropout", f"must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            bad_key("finetune.lora.targets", "is empty: name the layers to adapt, e.g. "
                    "[attention] or [attention, mlp].")
        if not self.rank and (self.targets != ["attention"] or self.train_lm_head):
            bad_key("finetune.lora.rank", "is 0 (LoRA off), but other finetune.lora keys are "
                    "set: give a positive rank (e.g. 8) to fine-tune with adapters.")


@dataclass
class FinetuneConfig(_Section):
    """Fine-tuning (classification, generative) from a pretrained checkpoint or from scratch."""

    _section = "finetune"

    init_from: str = ""  # a run dir, its checkpoints/STEP dir, or hf:DIR; empty: scratch
    pooling: str = "first"  # first token, mean of tokens, or last non-pad token
    pooler: bool = False  # BERT's dense+tanh pooler before the classifier
    freeze_backbone: bool = False
    backbone_lr_scale: float = 1.0  # backbone learning rate = this x optim.lr
    # validation metric that chooses the kept "best" checkpoint ("": the task's own, accuracy for
    # classifiers, loss for generative fine-tuning); best_mode "": max, but min for loss/perplexity
    best_metric: str = ""
    best_mode: str = ""
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def _check_rules(self) -> None:
        self.lora.validate()
        if self.lora.rank and self.freeze_backbone:
            bad_key("finetune.freeze_backbone", "is true with LoRA (finetune.lora.rank="
                    f"{self.lora.rank}), which already keeps the backbone frozen and trains "
                    "adapters inside it: set freeze_backbone to false.")
        require_positive(self, "finetune", ("backbone_lr_scale",), zero_ok=True)

    def best(self, default: str) -> tuple[str, str]:
        """(metric, mode) that choose the best checkpoint, defaults filled in."""
        metric = self.best_metric or default
        return metric, self.best_mode or ("min" if metric in LOWER_IS_BETTER else "max")


LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class GenerativeConfig(_Section):
    """Generative fine-tuning (`train.task: generative`): records become (prompt, target) texts
    through templates naming their fields; the loss covers the target and an end token only."""

    _section = "generative"

    prompt_template: str = "{input}\n"  # Python format string over the record's fields
    target_template: str = "{output}"
    # auto: wrap the prompt in the tokenizer's chat template when the checkpoint carries one
    chat_template: str = "auto"
    packing: bool = True  # several examples per row (segment ids keep them apart), else one
    overlong: str = "error"  # prompt + target + end > seq_len: error, truncate_left or skip
    validate_with: str = "loss"  # validation: target loss only, or also generate and score
    max_new_tokens: int = 0  # 0: the longest training target (+ end token)
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    max_labels: int = 50  # targets with at most this many distinct values are also scored as labels

    def _check_rules(self) -> None:
        require_positive(self, "generative", ("max_new_tokens", "top_k", "temperature"),
                         zero_ok=True)
        require_positive(self, "generative", ("max_labels",))
        if not 0.0 < self.top_p <= 1.0:
            bad_key("generative.top_p", f"must be in (0, 1], got {self.top_p}.")
        template_fields(self.prompt_template, "generative.prompt_template")
        template_fields(self.target_template, "generative.target_template")


@dataclass
class DistributedConfig(_Section):
    """Multi-host start-up (see `jaxlm.distributed`): empty values come from JAXLM_COORDINATOR,
    JAXLM_NUM_PROCESSES, JAXLM_PROCESS_ID, else from the cluster (TPU pod, SLURM, Open MPI)."""

    _section = "distributed"

    initialize: str = "auto"  # auto: when settings or a cluster are found; always; never
    coordinator: str = ""  # host:port of process 0
    num_processes: int = 0
    process_id: int = -1

    def _check_rules(self) -> None:
        require_positive(self, "distributed", ("num_processes",), zero_ok=True)
        if self.process_id < -1:
            bad_key("distributed.process_id", f"must be >= 0 (or -1: found), got {self.process_id}.")


@dataclass
class Config(_Section):
    """One experiment. `validate()` checks a config built in Python exactly as `load_config`
    checks a YAML file."""

    name: str = "run"
    run_dir: str = ""  # empty: runs/<name>
    data_root: str = ""  # empty: $JAXLM_DATA, else ../shared/data
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def _check_rules(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value.validate()
        m = self.model._resolve()
        if self.data.seq_len > m.max_len and m.position == "learned":
            bad_key("data.seq_len", f"{self.data.seq_len} exceeds model.max_len={m.max_len}, the "
                    "number of learned positions. Raise model.max_len or lower data.seq_len.")

    def resolved_data_root(self) -> str:
        """Where `{data_root}` points: data_root, else $JAXLM_DATA, else ../shared/data."""
        return self.data_root or os.environ.get("JAXLM_DATA", "") or "../shared/data"

    def resolve_path(self, spec: str) -> str:
        """Expand `{data_root}` in a data spec or path."""
        return spec.replace("{data_root}", self.resolved_data_root())


def config_from_dict(raw: dict, overrides: list[str] | None = None) -> Config:
    """Validate a raw dict (plus overrides) into a Config."""
    cfg = build_section(Config, with_overrides(raw, overrides))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the defaults when path is None) and apply overrides."""
    raw = load_yaml(path) if path else {}
    return config_from_dict(raw, overrides)


def to_dict(cfg: Any) -> dict:
    """A config as nested plain dicts (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write atomically (temporary file + rename): a process killed mid-write leaves no torn file."""
    path = Path(path)
    from jaxlm.atomic import write_text_atomic
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def validate(cfg: Config) -> None:
    """Check a whole config (types, choices, rules between keys): `cfg.validate()`."""
    cfg.validate()
