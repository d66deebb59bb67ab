"""Training a task from a config: the setup done once for every task, then the trainer's loop.

`train(cfg)` serves `jaxlm pretrain` (causal, masked) and `jaxlm finetune` (classification) and
any task registered in `jaxlm.tasks.TASKS`: run directory, mesh, data, tokenizer, model config,
optimizer, compiled steps, restore (or a pretrained start), the standard hooks, the loop, and the
task's final reports with the best checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import Config, ModelConfig
from jaxlm.data.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer
from jaxlm.errors import ConfigError, TrainingStopped
from jaxlm.models.lora import apply_lora, join_adapters, lora_spec, split_adapters, trainable
from jaxlm.run import Run
from jaxlm.sharding import data_parallel_size, make_mesh, use_mesh
from jaxlm.tasks import Task, task_for
from jaxlm.train.best import BestKeeper
from jaxlm.train.flops import (count_params, flops_per_token, frozen_and_adapter_params,
                               measure_peak_flops)
from jaxlm.train.frozen import restore_frozen, save_frozen
from jaxlm.train.hooks import TrainingHooks
from jaxlm.train.init_from import Pretrained, init_from_pretrained, load_pretrained, merged_model_config
from jaxlm.train.logger import MetricsLogger
from jaxlm.train.optim import build_optimizer
from jaxlm.train.preemption import PreemptionGuard
from jaxlm.train.state import TrainState
from jaxlm.train.steps import CompiledSteps, compile_steps
from jaxlm.train.trackers import check_trackers
from jaxlm.train.trainer import Hook, Trainer


@dataclass
class Setup:
    """What `train` prepares before compiling: the run, its task, data and model config."""

    cfg: Config
    run: Run
    mesh: Any
    task: Task
    sources: dict
    tokenizer: TextTokenizer
    model_cfg: ModelConfig
    pretrained: Pretrained | None


def check_batch(cfg: Config, mesh: Any) -> None:
    """Refuse a batch size that does not split evenly over the mesh's data-parallel shards."""
    dp = data_parallel_size(mesh, cfg.mesh.rules)
    per_micro = cfg.train.batch_size // cfg.train.grad_accum
    if per_micro % dp:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} (per micro-batch {per_micro}) does not divide "
            f"across the {dp} data-parallel shards of the mesh (mesh.data x mesh.fsdp). Use a batch "
            f"size that is a multiple of {dp * cfg.train.grad_accum}, or change the mesh.",
            culprit="train.batch_size")
    eval_size = cfg.train.eval_rows
    if eval_size % dp:
        raise ConfigError(
            f"train.eval_batch_size={eval_size} does not divide across the {dp} data-parallel "
            f"shards of the mesh. Use a multiple of {dp}, or change the mesh.",
            culprit="train.eval_batch_size")


AUTO_STEPS_PER_CALL = 16  # train.steps_per_call: 0 for batches of one shape


def steps_per_call(cfg: Config, task: Task) -> int:
    """Train steps per call of the compiled step: train.steps_per_call, or for 0 (auto)
    AUTO_STEPS_PER_CALL when the task's batches have one shape, else 1."""
    asked, one_shape = cfg.train.steps_per_call, task.batches_of_one_shape(cfg)
    if asked > 1 and not one_shape:
        raise ConfigError(
            f"train.steps_per_call={asked} runs several steps in one call, which needs training "
            f"batches of one shape; train.task '{task.name}' makes batches of several shapes "
            "(length buckets, or unpacked rows). Set train.steps_per_call to 1 or 0 (auto).",
            culprit="train.steps_per_call")
    return asked or (AUTO_STEPS_PER_CALL if one_shape else 1)


def run_tokenizer(cfg: Config, run: Run, task: Task, train_src: Any,
                  pre: Pretrained | None, overwrite: bool = False) -> TextTokenizer:
    """The run's saved tokenizer (when the run resumes with `cfg`), the checkpoint's, a given
    file, or a new one; saved into the run directory by `prepare` once the run directory is
    accepted."""
    if run.tokenizer_path.is_file() and not overwrite and run.matches(cfg):
        return run.tokenizer()
    t = cfg.data.tokenizer
    if pre is not None:
        return pre.tokenizer
    if t.path:
        return TextTokenizer(load_tokenizer(cfg.resolve_path(t.path)))
    return TextTokenizer(train_tokenizer(task.tokenizer_texts(train_src), t.kind, t.vocab_size))


def model_config(cfg: Config, tok: TextTokenizer, pre: Pretrained | None) -> ModelConfig:
    """The resolved model: inherited from a pretrained checkpoint, else the config with the
    tokenizer's vocabulary and pad id."""
    m = cfg.model
    if pre is not None:
        out = merged_model_config(m, pre.model).resolved()
    else:
        if m.vocab_size and m.vocab_size < tok.vocab_size:
            raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                              f"vocabulary ({tok.vocab_size}). Set it to 0 to take the tokenizer's "
                              "size.", culprit="model.vocab_size")
        out = dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size,
                                  pad_token_id=tok.pad_id or 0).resolved()
    if out.vocab_size < tok.vocab_size:
        raise ConfigError(f"The model's vocabulary ({out.vocab_size}) is smaller than the "
                          f"tokenizer's ({tok.vocab_size}).", culprit="model.vocab_size")
    return out


def prepare(cfg: Config, run_dir: str | None, overwrite: bool, task: Task | None = None
            ) -> Setup:
    """Everything before compiling; bad input fails here, before any training work."""
    cfg.validate()  # a config built in Python is checked as a YAML one is
    task_cls = type(task) if task is not None else task_for(cfg.train.task)
    run = Run.for_config(cfg, run_dir)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, num_devices=cfg.mesh.num_devices)
    check_batch(cfg, mesh)
    check_trackers(cfg.logging)  # a missing package or server: refused before any work
    sources = task_cls.open_sources(cfg)
    task = task if task is not None else task_cls.from_config(cfg, sources)
    steps_per_call(cfg, task)  # refused before any work too
    init_from = cfg.finetune.init_from if task.finetunes else ""
    pre = load_pretrained(cfg.resolve_path(init_from)) if init_from else None
    tok = run_tokenizer(cfg, run, task, sources["train"], pre, overwrite)
    mcfg = model_config(cfg, tok, pre)
    task.check_model(mcfg)
    task.prepare(cfg, tok, sources, pre)
    check_lora(cfg, task, mcfg)
    run.prepare(cfg, overwrite)  # the first write: bad input above leaves the run untouched
    if not run.tokenizer_path.is_file():
        run.save_tokenizer(tok)
    run.write_model_spec(mcfg, task.name, lora=lora_spec(cfg.finetune.lora), **task.head)
    return Setup(cfg, run, mesh, task, sources, tok, mcfg, pre)


def check_lora(cfg: Config, task: Task, mcfg: ModelConfig) -> None:
    """Refuse LoRA on a pretraining task, and targets or a rank that do not fit the model (an
    abstract build: no memory)."""
    if not cfg.finetune.lora.rank:
        return
    if not task.finetunes:
        raise ConfigError(
            f"finetune.lora.rank={cfg.finetune.lora.rank} asks for LoRA, but train.task "
            f"'{task.name}' is pretraining, which trains every weight from the start. Use LoRA "
            "with a fine-tuning task (jaxlm finetune: classification, generative), or set "
            "finetune.lora.rank to 0.", culprit="finetune.lora.rank")
    with nnx.use_eager_sharding(False):
        nnx.eval_shape(lambda: apply_lora(task.build_model(mcfg, cfg.train.seed),
                                          cfg.finetune.lora, seed=cfg.train.seed))


def restore_or_init(steps: CompiledSteps, ckpt: Any, iterator: Any, s: Setup
                    ) -> tuple[TrainState, int]:
    """The latest intact checkpoint (state and data position), else a fresh state (with the
    pretrained backbone copied in, when fine-tuning from one)."""
    found = ckpt.restore_latest(steps.checkpoint_target()) if ckpt.all_steps() else None
    if found is not None:
        tree, data_state, step = found
        if data_state.get("iterator") is not None:
            iterator.set_state(data_state["iterator"])
        frozen = (None if steps.layout.trained is None else
                  restore_frozen(s.run.path, steps.layout, steps.state_sharding.params))
        return steps.layout.from_checkpoint(tree, frozen), step
    if s.pretrained is None:
        state = steps.init()
    else:
        init, given = pretrained_init(steps, s)
        state = init(given)
    if steps.layout.trained is not None:  # LoRA: the frozen base, once per run
        save_frozen(s.run.path, steps.layout, state)
    return state, 0


def pretrained_init(steps: CompiledSteps, s: Setup) -> tuple[Any, dict[str, jax.Array]]:
    """(a jitted init, its argument): `init(given)` is a fresh state with the pretrained weights
    (`given`: placed on their shardings, by parameter path) copied into the plain model's
    parameters (adapters stay as built), in one program that never draws the weights they
    replace."""
    abstract = jax.tree.map(lambda x: x, split_adapters(steps.abstract_state.params)[0])
    placed = init_from_pretrained(  # the pretrained arrays, placed; the rest stays abstract
        abstract, s.pretrained, split_adapters(steps.state_sharding.params)[0],
        s.cfg.finetune.pooler and s.task.name == "classification")
    given = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(placed)
             if isinstance(x, jax.Array)}

    def replace(fresh: Any, given: dict[str, jax.Array]) -> Any:
        params, adapters = split_adapters(fresh)
        paths, tree = jax.tree_util.tree_flatten_with_path(params)
        params = jax.tree.unflatten(tree, [given.get(jax.tree_util.keystr(k), x)
                                           for k, x in paths])
        return join_adapters(params, adapters)

    return steps.init_replacing(replace), given


def _optimizer(cfg: Config, task: Task):
    ft, finetuning = cfg.finetune, task.finetunes
    return build_optimizer(cfg.optim, cfg.train.steps,
                           backbone_lr_scale=ft.backbone_lr_scale if finetuning else 1.0,
                           freeze_backbone=ft.freeze_backbone and finetuning)


def _best_keeper(s: Setup) -> BestKeeper | None:
    if s.task.best_metric is None:
        return None
    return BestKeeper(s.run.path, s.task.best_metric, s.task.best_mode)


def _same_batches(a: Any, b: Any) -> bool:
    """Whether two evaluation batch lists hold the same rows and are scored the same way."""
    if a is None or len(a) != len(b) or getattr(a, "generate", False) != getattr(
            b, "generate", False):
        return False
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b))


def _final_reports(s: Setup, steps: CompiledSteps, state: TrainState, best: BestKeeper | None,
                   summary: dict, logger: MetricsLogger, validated: tuple[Any, Any] = (None, None)
                   ) -> None:
    """The task's reports on its final splits, with the best parameters when one was kept.

    validated: (the validation batches, (step, report) of the kept parameters' validation):
    when the final validation would score the same batches with the same parameters, that
    report is the final one, instead of a second pass over the split."""
    if not s.task.final_splits or summary["step"] < s.cfg.train.steps:
        return
    params, params_step = state.params, summary["step"]
    if best is not None and best.best is not None:
        target = steps.checkpoint_target()["params"]
        frozen = None if steps.layout.trained is None else steps.layout.split(params)[1]
        params = steps.layout.params_from_checkpoint(best.restore(target), frozen)
        summary["best"], params_step = best.best, best.best["step"]
    val_batches, kept = validated
    for split in s.task.final_splits:
        if split in s.sources:
            batches = s.task.eval_batches(s.cfg, s.tokenizer, s.sources[split], whole=True,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())
            if (split == "validation" and kept is not None and kept[0] == params_step
                    and _same_batches(val_batches, batches)):
                summary[split] = kept[1]
            else:
                summary[split] = s.task.evaluate(steps.eval, params, batches)
            logger.log(summary["step"], f"final_{split}", _scalars(summary[split]))


def _scalars(report: dict) -> dict[str, float]:
    return {k: v for k, v in report.items() if isinstance(v, float)}


def _final_validation(s: Setup, steps: CompiledSteps, best: BestKeeper | None, pi: int,
                      pc: int) -> tuple[Any, dict] | None:
    """(evaluate, what it scored) for the last step's validation when the final report scores
    the whole validation split with the last parameters (no best checkpoint kept): the last
    validation scores the whole split itself, and the final report reuses it, instead of a
    sample at the last step and then the whole split with the same parameters."""
    if best is not None or "validation" not in s.task.final_splits:
        return None
    scored: dict[str, Any] = {}

    def evaluate(params: Any) -> dict:
        scored["batches"] = s.task.eval_batches(s.cfg, s.tokenizer, s.sources["validation"],
                                                whole=True, process_index=pi, process_count=pc)
        return s.task.evaluate(steps.eval, params, scored["batches"])

    return evaluate, scored


def _loop(s: Setup, steps: CompiledSteps, hooks: Iterable[Hook], show_progress: bool,
          peak_flops: float | None) -> tuple[dict[str, Any], MetricsLogger]:
    """The loop with the standard hooks; returns the summary and the still open logger (the
    trackers log summary.json once it is written)."""
    cfg, t = s.cfg, s.cfg.train
    pi, pc = jax.process_index(), jax.process_count()
    iterator = iter(s.task.train_batches(cfg, s.tokenizer, s.sources, process_index=pi,
                                         process_count=pc))
    val = (s.task.validation_batches(cfg, s.tokenizer, s.sources["validation"], process_index=pi,
                                     process_count=pc) if "validation" in s.sources else None)
    ckpt = s.run.checkpointer(keep=t.keep_checkpoints, async_save=t.async_checkpointing)
    state, start = restore_or_init(steps, ckpt, iterator, s)
    best = _best_keeper(s)
    try:
        logger = MetricsLogger(s.run.path, resumed_from=start, cfg=cfg)
    except BaseException:
        ckpt.close()
        raise
    T, B = cfg.data.seq_len, t.batch_size
    final_val = _final_validation(s, steps, best, pi, pc) if val else None
    std = TrainingHooks(
        logger, ckpt, iterator, steps.layout, tokens_per_step=B * T,
        flops_per_step=step_flops_per_token(steps, s.task, s.model_cfg, T) * B * T,
        peak_flops=peak_flops or measure_peak_flops(s.model_cfg.dtype) * s.mesh.size,
        on_nonfinite=t.on_nonfinite, show_progress=show_progress,
        evaluate=(lambda p: s.task.evaluate(steps.eval, p, val)) if val else None,
        final_evaluate=final_val[0] if final_val else None,
        on_eval=(lambda step, st, m: _keep_report(
            best.offer(step, steps.layout.checkpoint_params(st.params), m))) if best else None)
    kept: dict[str, Any] = {}

    def _keep_report(better: bool) -> None:
        if better:  # the full report of the kept parameters, for the final validation report
            kept["best"] = std.last_report
    trainer = Trainer(steps, t.steps, steps_per_call=steps_per_call(cfg, s.task))
    guard = PreemptionGuard(t.preemption_check_every)
    std.install(trainer, start, state, cfg, guard)
    trainer.hooks.extend(hooks)
    try:
        with guard:
            state = trainer.fit(state, iterator, start)
        std.finish(state)
        ckpt.wait()
        summary = std.summary(int(jax.device_get(state.step)))
        final = kept.get("best") if best is not None else std.last_report
        scored = final_val[1].get("batches", val) if final_val else val
        _final_reports(s, steps, state, best, summary, logger, (scored, final))
    except BaseException as e:
        logger.close("stopped" if isinstance(e, TrainingStopped) else "failed")
        raise
    finally:
        std.bar.close()
        ckpt.close()
        if best is not None:
            best.close()
    if steps.layout.trained is not None:
        summary["trainable_params"] = count_params(steps.layout.split(state.params)[0])
    summary.update(params=count_params(state.params), resumed_from=start,
                   run_dir=str(s.run.path), vocab_size=s.model_cfg.vocab_size,
                   devices=s.mesh.size, mesh=dict(s.mesh.shape))
    summary["state"] = state
    return summary, logger


def compile_task_steps(s: Setup) -> CompiledSteps:
    """The task's model (with LoRA adapters when finetune.lora asks), optimizer and compiled
    steps; call within `use_mesh(s.mesh, ...)`."""
    return build_task_steps(s.cfg, s.task, s.model_cfg, s.mesh)


def build_task_steps(cfg: Config, task: Task, model_cfg: ModelConfig, mesh: Mesh
                     ) -> CompiledSteps:
    """`compile_task_steps` from its parts, for callers without a run (`jaxlm bench`)."""
    tx, lr = _optimizer(cfg, task)
    lora = cfg.finetune.lora if task.finetunes else None
    return compile_steps(
        lambda: apply_lora(task.build_model(model_cfg, cfg.train.seed), lora,
                           seed=cfg.train.seed), tx,
        task.loss, lr, mesh, seed=cfg.train.seed, grad_accum=cfg.train.grad_accum,
        dropout=model_cfg.dropout > 0 or bool(lora and lora.rank and lora.dropout),
        rules=cfg.mesh.rules, trainable=trainable(lora))


def step_flops_per_token(steps: CompiledSteps, task: Task, model_cfg: ModelConfig,
                         seq_len: int) -> float:
    """Training FLOPs per token of the task's compiled step, for MFU: no vocabulary projection
    for a classifier, no weight gradients for LoRA's frozen base (`jaxlm.train.flops`)."""
    trained, frozen = steps.layout.split(steps.abstract_state.params)
    frozen_matmul, adapters = frozen_and_adapter_params(trained, frozen, model_cfg,
                                                        task.vocab_logits)
    return flops_per_token(model_cfg, seq_len, vocab_logits=task.vocab_logits,
                           frozen_matmul_params=frozen_matmul, adapter_params=adapters)


def train(cfg: Config, run_dir: str | None = None, *, overwrite: bool = False,
          show_progress: bool = True, hooks: Iterable[Hook] = (), task: Task | None = None,
          peak_flops: float | None = None) -> dict[str, Any]:
    """Train (or resume) the task `cfg.train.task` names, or `task` (an instance of a Task
    subclass of one's own: model, loss, data, metrics); returns the run summary (with the final
    state under "state"). `hooks` are extra `jaxlm.train.trainer.Hook`s."""
    s = prepare(cfg, run_dir, overwrite, task)
    with use_mesh(s.mesh, cfg.mesh.rules):
        steps = compile_task_steps(s)
        summary, logger = _loop(s, steps, hooks, show_progress, peak_flops)
    if s.task.finetunes:
        summary["init_from"] = cfg.finetune.init_from or None
    if s.task.name == "classification":
        summary["classes"] = s.task.class_names
    try:
        if jax.process_index() == 0:
            s.run.write_summary({k: v for k, v in summary.items() if k != "state"})
            logger.log_summary(s.run.summary() or {})
            for split in s.task.final_splits:
                if split in summary:
                    s.run.eval_path(split).write_text(json.dumps(summary[split], indent=2))
    finally:
        logger.close()
    return summary


def with_task(cfg: Config, task: str) -> Config:
    """A copy of `cfg` training `task` (the caller's config is left as it was)."""
    out = copy.deepcopy(cfg)
    out.train.task = task
    return out
