"""Generative fine-tuning: teach a causal LM to write a record's target after its prompt.

The loss is the causal LM loss on the target tokens and the end token only. Evaluation reports
that loss and its perplexity, and (with generation on: `jaxlm evaluate`, the final reports, and
validation when `generative.validate_with: generate`) generates an answer for every prompt with
the KV-cache decoder and scores it: exact match, BLEU, ROUGE-1/2/L, and, when the training
targets are a small closed set, accuracy and macro-F1 as a classifier would be judged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax

from jaxlm.config import Config, ModelConfig
from jaxlm.data.sources import Source
from jaxlm.data.templates import Templates
from jaxlm.errors import ConfigError
from jaxlm.tasks.base import Task
from jaxlm.tasks.losses import token_loss

LOSS_METRICS = ("loss", "perplexity", "token_accuracy")


@dataclass
class GenerativeTask(Task):
    """(prompt, target) records; `head` keeps what evaluation needs to format and score them."""

    name: ClassVar[str] = "generative"
    templates: Templates = field(default_factory=Templates)
    labels: list[str] = field(default_factory=list)  # the closed set of targets ([]: free text)
    max_new_tokens: int = 32
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0, "top_k": 0,
                                                              "top_p": 1.0})
    generate_in_validation: bool = False
    best_metric: str | None = "loss"
    best_mode: str = "min"
    final_splits: tuple[str, ...] = ("validation", "test")
    finetunes: ClassVar[bool] = True

    @classmethod
    def open_sources(cls, cfg: Config) -> dict[str, Source]:
        """train / validation / test records; without a validation split, the last
        `data.val_fraction` of train is held out."""
        from jaxlm.data.records import holdout_records, open_records
        from jaxlm.data.sources import SourceOptions, has_split, parse_spec
        from jaxlm.errors import DataError

        d = cfg.data
        if not d.train:
            raise DataError("No training data given. Set data.train to a dataset of records, e.g. "
                            "'jsonl:data/qa' (train.jsonl, dev.jsonl, test.jsonl) with fields the "
                            "generative templates name.", culprit="data.train")
        opts = SourceOptions.from_config(d)
        spec = parse_spec(cfg.resolve_path(d.train), opts)
        out: dict[str, Source] = {"train": open_records(spec, spec.split or "train")}
        for split, given in (("validation", d.validation), ("test", d.test)):
            if given:
                out[split] = open_records(parse_spec(cfg.resolve_path(given), opts), split)
            elif has_split(spec, split):
                out[split] = open_records(spec, split)
        if "validation" not in out:
            out["train"], out["validation"] = holdout_records(out["train"], d.val_fraction)
        return out

    @classmethod
    def open_source(cls, cfg: Config, spec: str, split: str,
                    labels: list[str] | None = None) -> Source:
        """One split of a dataset spec, as records (`jaxlm.data.records`)."""
        from jaxlm.data.records import open_records
        from jaxlm.data.sources import SourceOptions, parse_spec
        parsed = parse_spec(spec, SourceOptions.from_config(cfg.data))
        return open_records(parsed, parsed.split or split)

    @classmethod
    def from_config(cls, cfg: Config, sources: dict[str, Source]) -> "GenerativeTask":
        g = cfg.generative
        metric, mode = cfg.finetune.best("loss")
        if metric not in LOSS_METRICS and g.validate_with != "generate":
            raise ConfigError(f"finetune.best_metric: {metric} is a generation metric, and "
                              "validation only computes the target loss. Set "
                              "generative.validate_with: generate (validation then generates "
                              "and scores every eval_every steps), or choose loss.",
                              culprit="finetune.best_metric")
        if cfg.finetune.freeze_backbone:
            raise ConfigError("finetune.freeze_backbone cannot be used with train.task: "
                              "generative: the LM head reads the token embeddings (GPT-2 ties "
                              "them), so freezing the backbone leaves little or nothing to train. "
                              "Lower finetune.backbone_lr_scale instead.",
                              culprit="finetune.freeze_backbone")
        task = cls(Templates(g.prompt_template, g.target_template), [], g.max_new_tokens,
                   {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p},
                   g.validate_with == "generate", metric, mode)
        task.init_from = cfg.finetune.init_from  # named by check_model when it is the culprit
        return task

    @classmethod
    def from_head(cls, head: dict, cfg: Config | None = None) -> "GenerativeTask":
        t = head.get("templates") or {}
        return cls(Templates(t.get("prompt", "{input}\n"), t.get("target", "{output}"),
                             t.get("chat")), list(head.get("labels") or []),
                   int(head.get("max_new_tokens") or 32), dict(head.get("sampling") or {}) or
                   {"temperature": 0.0, "top_k": 0, "top_p": 1.0})

    @property
    def head(self) -> dict[str, Any]:
        return {"templates": dataclasses.asdict(self.templates), "labels": self.labels,
                "max_new_tokens": self.max_new_tokens, "sampling": self.sampling}

    @property
    def generation(self) -> dict[str, Any]:
        """The generation settings in use: max_new_tokens and the sampling keys."""
        return {"max_new_tokens": self.max_new_tokens, **self.sampling}

    def check_model(self, model_cfg: ModelConfig) -> None:
        if model_cfg.causal:
            return
        init_from = getattr(self, "init_from", "")
        if init_from:
            raise ConfigError(f"finetune.init_from '{init_from}' holds a {model_cfg.family} "
                              "model, which is bidirectional (a masked LM): it cannot generate "
                              "left to right, so train.task: generative cannot start from it. "
                              "Start from a causal (GPT-2 or Llama) run or checkpoint, e.g. "
                              "hf:gpt2, or fine-tune a classifier from it (train.task: "
                              "classification).", culprit="finetune.init_from")
        raise ConfigError("train.task: generative needs a causal language model (GPT-2 or "
                          f"Llama family), and this {model_cfg.family} model is bidirectional: "
                          "it cannot generate left to right. Set model.family: gpt2 or llama, "
                          "or start from a causal run or checkpoint (finetune.init_from).",
                          culprit="model.family")

    def build_model(self, model_cfg: ModelConfig, seed: int = 0):
        from jaxlm.models import build_model
        return build_model(model_cfg, "causal", seed=seed)

    def loss(self, model: Any, batch: dict, dropout_rng: jax.Array | None):
        return token_loss(model, batch, dropout_rng)

    def tokenizer_texts(self, source: Source):
        """Prompt and target texts of the records (a tokenizer trained for this task)."""
        for i in range(len(source)):
            record = source[i]
            if not self.templates.missing(record):
                yield from self.templates.texts(record, {})

    # -- data ---------------------------------------------------------------------------------
    def encode(self, cfg: Config, tokenizer: Any, source: Source):
        """The split's (prompt, target) token pairs (`jaxlm.data.generative.Pairs`)."""
        from jaxlm.data.generative import encode_pairs
        return encode_pairs(source, tokenizer, self.templates, seq_len=cfg.data.seq_len,
                            overlong=cfg.generative.overlong,
                            on_invalid=cfg.data.on_invalid or "error")

    def prepare(self, cfg: Config, tokenizer: Any, sources: dict[str, Source],
                pretrained: Any = None) -> None:
        """Take the checkpoint's chat template (generative.chat_template: auto), encode train
        once, and fix the label set and the generation length from it."""
        from jaxlm.data.generative import max_target_tokens
        chat = getattr(pretrained, "chat_template", None)
        if cfg.generative.chat_template == "auto" and chat:
            self.templates = dataclasses.replace(self.templates, chat=chat)
        self._train = self.encode(cfg, tokenizer, sources["train"])
        distinct = sorted(set(self._train.targets))
        self.labels = distinct if len(distinct) <= cfg.generative.max_labels else []
        self.max_new_tokens = cfg.generative.max_new_tokens or max_target_tokens(self._train)

    def batches_of_one_shape(self, cfg: Config) -> bool:
        return cfg.generative.packing  # packed rows of seq_len; unpacked rows vary in length

    def train_batches(self, cfg: Config, tokenizer: Any, sources: dict[str, Source], *,
                      process_index: int = 0, process_count: int = 1):
        from jaxlm.data.generative import train_dataset
        if getattr(self, "_train", None) is None:
            self.prepare(cfg, tokenizer, sources)
        return train_dataset(self._train, seq_len=cfg.data.seq_len,
                             global_batch=cfg.train.batch_size, num_steps=cfg.train.steps,
                             seed=cfg.train.seed, packed=cfg.generative.packing,
                             process_index=process_index, process_count=process_count,
                             prefetch=cfg.data.prefetch)

    def eval_batches(self, cfg: Config, tokenizer: Any, source: Source, *, batch_size: int = 0,
                     whole: bool = False, process_index: int = 0, process_count: int = 1):
        from jaxlm.data.generative import eval_batches
        batches = eval_batches(self.encode(cfg, tokenizer, source), seq_len=cfg.data.seq_len,
                               global_batch=batch_size or cfg.train.eval_rows,
                               max_batches=0 if whole else max(cfg.train.eval_batches, 0),
                               process_index=process_index, process_count=process_count)
        batches.tokenizer, batches.generate = tokenizer, True
        return batches

    def validation_batches(self, cfg: Config, tokenizer: Any, source: Source, *,
                           process_index: int = 0, process_count: int = 1):
        """As `eval_batches`; generation is scored only with validate_with: generate."""
        batches = self.eval_batches(cfg, tokenizer, source, process_index=process_index,
                                    process_count=process_count)
        batches.generate = self.generate_in_validation
        return batches

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, evaluator: Any, params: Any, batches: list[dict]) -> dict[str, Any]:
        """Target loss, perplexity and token accuracy; with generation on, the generation
        report of every example (see the module docstring) and the predictions."""
        report = evaluator.mean_metrics(params, batches)
        report["token_accuracy"] = report.pop("accuracy", 0.0)
        if not getattr(batches, "generate", False):
            return report
        predictions = self.predict(evaluator.model_of(params), batches.tokenizer, batches.pairs,
                                   batches.count)
        from jaxlm.generation.scoring import generation_report
        refs = batches.pairs.targets[:batches.count]
        labels = self.labels if self.labels and set(map(str.strip, refs)) <= set(
            map(str.strip, self.labels)) else None
        report.update(generation_report(predictions, refs, labels))
        report["predictions"] = [{"prompt": p, "target": t, "output": o} for p, t, o in
                                 zip(batches.pairs.prompts, refs, predictions)]
        return report

    def predict(self, model: Any, tokenizer: Any, pairs: Any, count: int | None = None,
                batch_size: int = 32) -> list[str]:
        """Generated targets for the first `count` prompts of `pairs` (greedy by default)."""
        count = len(pairs) if count is None else count
        return self.complete(model, tokenizer, [pairs.prompt_ids(i) for i in range(count)],
                             batch_size=batch_size)

    def complete(self, model: Any, tokenizer: Any, prompts: list[list[int]], *,
                 batch_size: int = 32, mesh: Any = None, rules: dict | None = None) -> list[str]:
        """The generated target of each prompt (token ids, `jaxlm.data.generative.
        encode_prompts`): batched KV-cache decoding with the task's settings, up to the end
        token or `max_new_tokens`; on `mesh`, the parameters are sharded as in training."""
        from jaxlm.data.generative import end_id
        from jaxlm.generate import Generator

        if not prompts:
            return []
        gen = Generator(model, tokenizer, mesh=mesh, rules=rules, batch_size=batch_size)
        ids = gen.generate_ids(prompts, max_new_tokens=self.max_new_tokens,
                               stop_ids=[end_id(tokenizer)], **self.sampling)
        return [tokenizer.decode(x) for x in ids]

    def set_generation(self, *, max_new_tokens: int | None = None, **sampling: Any) -> None:
        """Override the saved generation settings (None keeps one): max_new_tokens, and the
        sampling keys temperature, top_k, top_p and seed (a ConfigError for a bad value)."""
        from jaxlm.generation.sampling import Sampling

        unknown = sorted(set(sampling) - {"temperature", "top_k", "top_p", "seed"})
        if unknown:
            raise ConfigError(f"Unknown generation settings {', '.join(unknown)}; the settings "
                              "are max_new_tokens, temperature, top_k, top_p and seed.",
                              culprit=unknown[0])
        if max_new_tokens is not None:
            if max_new_tokens < 1:
                raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.",
                                  culprit="max_new_tokens")
            self.max_new_tokens = int(max_new_tokens)
        merged = {**self.sampling, **{k: v for k, v in sampling.items() if v is not None}}
        Sampling(merged.get("temperature", 0.0), merged.get("top_k", 0), merged.get("top_p", 1.0))
        self.sampling = merged
