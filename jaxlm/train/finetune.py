"""`jaxlm finetune`: sequence classification, from scratch or from a pretrained backbone.

Same loop as pretraining with a different task: the classifier head is new, the backbone comes from
`finetune.init_from` (a pretraining run or a Hugging Face checkpoint). Validation runs during
training; the best checkpoint by `finetune.best_metric` is kept in RUN_DIR/best and used for the
final test evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxlm.atomic import write_text_atomic
from jaxlm.config import Config
from jaxlm.data.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer
from jaxlm.errors import ConfigError
from jaxlm.metrics import classification_report
from jaxlm.models import build_model
from jaxlm.sharding import make_mesh, use_mesh
from jaxlm.tasks import LOSSES
from jaxlm.train.checkpoint import Checkpointer, require_intact, seal
from jaxlm.train.flops import count_params, flops_per_token
from jaxlm.train.init_from import (Pretrained, finetune_model_config, init_from_pretrained,
                                   load_pretrained)
from jaxlm.train.logger import MetricsLogger
from jaxlm.train.loop import LoopSpec, restore_or_init, run_loop
from jaxlm.train.optim import build_optimizer
from jaxlm.train.pretrain import check_batch
from jaxlm.train.run_dir import prepare_run_dir, resolve_run_dir, write_model_spec, write_summary
from jaxlm.train.steps import CompiledSteps, compile_steps, put_batch


def open_splits(cfg: Config) -> dict[str, Any]:
    """train / validation / test sources with one label set; without a validation split, the
    last `data.val_fraction` of train is held out (e.g. TREC)."""
    from jaxlm.data.classification import classification_sources
    from jaxlm.data.lm_data import holdout

    out = classification_sources(cfg)
    if "validation" not in out:
        out["train"], out["validation"] = holdout(out["train"], cfg.data.val_fraction)
    return out


def finetune_tokenizer(cfg: Config, run_dir: Path, pre: Pretrained | None, train_src) -> TextTokenizer:
    """The checkpoint's tokenizer, the run's saved one (resume), a given file, or a new one."""
    saved = run_dir / "tokenizer.json"
    if saved.is_file():
        return TextTokenizer(load_tokenizer(saved))
    if pre is not None:
        tok = pre.tokenizer
    elif cfg.data.tokenizer.path:
        tok = TextTokenizer(load_tokenizer(cfg.resolve_path(cfg.data.tokenizer.path)))
    else:
        t = cfg.data.tokenizer
        tok = TextTokenizer(train_tokenizer(train_src.texts(), t.kind, t.vocab_size))
    tok.save(saved)
    return tok


def predict_batches(steps_eval_logits, params: Any, batches: list[dict], sharding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [N, C], labels [N], weights [N]) over host batches, padding rows included."""
    logits, labels, weights = [], [], []
    for b in batches:
        out = steps_eval_logits(params, put_batch(b, sharding))
        logits.append(np.asarray(jax.device_get(out)))
        labels.append(b["labels"])
        weights.append(b["weights"])
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(weights)


def evaluate_classifier(logits_fn, params: Any, batches: list[dict], sharding,
                        class_names: list[str]) -> dict:
    """Classification report of a classifier's parameters over host batches (padding rows dropped)."""
    logits, labels, weights = predict_batches(logits_fn, params, batches, sharding)
    keep = weights > 0
    logits, labels = logits[keep], labels[keep]
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    loss = float(-np.take_along_axis(np.asarray(logp), labels[:, None], axis=1).mean())
    return classification_report(labels, logits.argmax(-1), len(class_names), class_names, loss)


def make_logits_fn(graphdef, steps: CompiledSteps):
    """A jitted (params, batch) -> class logits function with the training shardings."""
    from flax import nnx

    def logits(params, batch):
        model = nnx.merge(graphdef, params)
        return model(batch["inputs"], segment_ids_BxT=batch.get("segment_ids"))

    return jax.jit(logits, in_shardings=(steps.state_sharding["params"], steps.batch_sharding))


class BestKeeper:
    """Keeps the parameters of the best validation result in RUN_DIR/best (orbax, one step)."""

    def __init__(self, run_dir: Path, metric: str, mode: str):
        self.dir, self.metric, self.mode = run_dir / "best", metric, mode
        self.manager = ocp.CheckpointManager(
            self.dir.absolute(), options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=False,
                best_fn=lambda m: m[metric], best_mode=mode),
            item_names=("params",))
        meta = self.dir / "best.json"
        self.best = json.loads(meta.read_text()) if meta.is_file() else None
        steps = list(self.manager.all_steps())
        if steps and (self.best is None or self.best["step"] not in steps):
            # killed between orbax's save and best.json: the folder (and orbax's metrics) win
            value = (self.manager.metrics(steps[-1]) or {}).get(metric)
            self.best = ({"step": steps[-1], "value": value, "metric": metric}
                         if value is not None else None)

    def offer(self, step: int, params: Any, metrics: dict) -> bool:
        """Keep `params` if `metrics` beats the best so far; returns whether it did."""
        if self.metric not in metrics:
            raise ConfigError(f"finetune.best_metric '{self.metric}' is not a validation metric; "
                              f"choose one of {', '.join(sorted(k for k, v in metrics.items() if isinstance(v, float)))}.",
                              culprit="finetune.best_metric")
        value = metrics[self.metric]
        better = (self.best is None or (value > self.best["value"] if self.mode == "max"
                                        else value < self.best["value"]))
        if better and step not in self.manager.all_steps():
            self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                              metrics={self.metric: value}, force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                seal(self.dir / str(step))  # checked when loaded (evaluate, predict, export)
            self.best = {"step": step, "value": value, "metric": self.metric}
            write_text_atomic(self.dir / "best.json", json.dumps(self.best))
        return better

    def restore(self, target: Any) -> Any:
        """The kept best parameters, restored onto `target`'s shardings."""
        step = self.best["step"]
        require_intact(self.dir, step)
        return self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))["params"]

    def close(self) -> None:
        """Close the checkpoint manager."""
        self.manager.close()


def finetune(cfg: Config, run_dir: str | None = None, *, overwrite: bool = False,
             show_progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) a classifier; returns the run summary."""
    from jaxlm.data.classification import classification_dataset, classification_eval_batches
    from jaxlm.train.checkpoint import abstract_with_shardings

    if cfg.train.task != "classification":
        cfg.train.task = "classification"
    out_dir = resolve_run_dir(cfg, run_dir)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, num_devices=cfg.mesh.num_devices)
    check_batch(cfg, mesh)
    splits = open_splits(cfg)
    class_names = list(splits["train"].label_names)
    pre = load_pretrained(cfg.resolve_path(cfg.finetune.init_from)) if cfg.finetune.init_from else None
    prepare_run_dir(cfg, out_dir, overwrite)
    tok = finetune_tokenizer(cfg, out_dir, pre, splits["train"])
    mcfg = finetune_model_config(cfg, pre, tok)
    if mcfg.vocab_size < tok.vocab_size:
        raise ConfigError(f"The model's vocabulary ({mcfg.vocab_size}) is smaller than the "
                          f"tokenizer's ({tok.vocab_size}).", culprit="model.vocab_size")
    ft = cfg.finetune
    write_model_spec(out_dir, mcfg, "classification", num_labels=len(class_names),
                     class_names=class_names, pooling=ft.pooling, pooler=ft.pooler)
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps, backbone_lr_scale=ft.backbone_lr_scale,
                             freeze_backbone=ft.freeze_backbone)
    T, B = cfg.data.seq_len, cfg.train.batch_size
    buckets = list(cfg.data.length_buckets) or None
    common = dict(seq_len=T, buckets=buckets, process_index=jax.process_index(),
                  process_count=jax.process_count())
    make = lambda: build_model(mcfg, "classification", seed=cfg.train.seed,  # noqa: E731
                               num_labels=len(class_names), pooling=ft.pooling, pooler=ft.pooler)
    with use_mesh(mesh, cfg.mesh.rules):
        steps = compile_steps(make, tx, LOSSES["classification"], lr, mesh, seed=cfg.train.seed,
                              grad_accum=cfg.train.grad_accum, dropout=mcfg.dropout > 0,
                              rules=cfg.mesh.rules)
        from flax import nnx
        with nnx.use_eager_sharding(False):
            graphdef = nnx.graphdef(nnx.eval_shape(make))
        logits_fn = make_logits_fn(graphdef, steps)
        ds = classification_dataset(splits["train"], tok, global_batch=B, num_steps=cfg.train.steps,
                                    seed=cfg.train.seed, **common)
        iterator = iter(ds)
        eval_b = cfg.train.eval_batch_size or B
        val = (classification_eval_batches(splits["validation"], tok, global_batch=eval_b, **common)
               if "validation" in splits else None)
        ckpt = Checkpointer(out_dir / "checkpoints", keep=cfg.train.keep_checkpoints,
                            async_save=cfg.train.async_checkpointing)
        state, start = restore_or_init(steps, ckpt, iterator)
        if start == 0 and pre is not None:
            state["params"] = init_from_pretrained(state["params"], pre,
                                                   steps.state_sharding["params"], ft.pooler)
        best = BestKeeper(out_dir, ft.best_metric, ft.best_mode)
        evaluate = ((lambda p: _scalars(evaluate_classifier(logits_fn, p, val, steps.batch_sharding,
                                                            class_names)))
                    if val else None)
        logger = MetricsLogger(out_dir, resumed_from=start)
        spec = LoopSpec(
            total_steps=cfg.train.steps, tokens_per_step=B * T,
            flops_per_step=flops_per_token(mcfg, T) * B * T, peak_flops=None,
            log_every=cfg.train.log_every, eval_every=cfg.train.eval_every,
            checkpoint_every=cfg.train.checkpoint_every, evaluate=evaluate,
            on_eval=lambda step, st, m: best.offer(step, st["params"], m),
            show_progress=show_progress, stop_after=stop_after,
            on_nonfinite=cfg.train.on_nonfinite,
            preemption_check_every=cfg.train.preemption_check_every,
            extra_summary={"params": count_params(state["params"]), "resumed_from": start,
                           "run_dir": str(out_dir), "init_from": ft.init_from or None,
                           "classes": class_names})
        try:
            summary, state = run_loop(steps, state, start, iterator, ckpt, logger, spec)
            final_params = state["params"]
            if best.best is not None:
                target = abstract_with_shardings(steps.abstract_state["params"],
                                                 steps.state_sharding["params"])
                final_params = best.restore(target)
                summary["best"] = best.best
            for split in ("validation", "test"):
                if split not in splits or (stop_after is not None and summary["step"] < cfg.train.steps):
                    continue
                batches = val if split == "validation" else classification_eval_batches(
                    splits[split], tok, global_batch=eval_b, **common)
                report = evaluate_classifier(logits_fn, final_params, batches, steps.batch_sharding,
                                             class_names)
                summary[split] = report
                logger.log(summary["step"], f"final_{split}", _scalars(report))
        finally:
            logger.close()
            best.close()
            ckpt.close()
    if jax.process_index() == 0:
        write_summary(out_dir, summary)
        for split in ("validation", "test"):
            if split in summary:
                (out_dir / f"eval_{split}.json").write_text(json.dumps(summary[split], indent=2))
    summary["state"] = state
    return summary


def _scalars(report: dict) -> dict[str, float]:
    return {k: v for k, v in report.items() if isinstance(v, float)}
