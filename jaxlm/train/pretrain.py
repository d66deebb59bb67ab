"""`jaxlm pretrain`: language-model pretraining from a config."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxlm.config import Config
from jaxlm.data.lm_data import encode_stream, lm_batches, load_lm_sources, tokenizer_texts
from jaxlm.data.sources import Source
from jaxlm.data.tokenizer import TextTokenizer, iter_chunks, load_tokenizer, train_tokenizer
from jaxlm.errors import ConfigError
from jaxlm.models import build_model
from jaxlm.sharding import data_parallel_size, make_mesh, use_mesh
from jaxlm.tasks import LOSSES
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.flops import count_params, flops_per_token, measure_peak_flops
from jaxlm.train.logger import MetricsLogger
from jaxlm.train.loop import LoopSpec, evaluate_batches, restore_or_init, run_loop
from jaxlm.train.optim import build_optimizer
from jaxlm.train.run_dir import prepare_run_dir, resolve_run_dir, write_model_spec, write_summary
from jaxlm.train.steps import compile_steps


def load_corpus(cfg: Config) -> tuple[Source, Source]:
    """(train, validation) sources from data.train / data.validation (any dataset spec)."""
    return load_lm_sources(cfg)


def setup_tokenizer(cfg: Config, run_dir: Path, train: Source | str) -> TextTokenizer:
    """The run's tokenizer: the one saved in the run directory, a given file, or a new one."""
    saved = run_dir / "tokenizer.json"
    if saved.is_file():
        return TextTokenizer(load_tokenizer(saved))
    t = cfg.data.tokenizer
    texts = iter_chunks(train) if isinstance(train, str) else tokenizer_texts(train)
    tok = TextTokenizer(load_tokenizer(cfg.resolve_path(t.path)) if t.path else train_tokenizer(
        texts, t.kind, t.vocab_size))
    tok.save(saved)
    return tok


def model_config_for(cfg: Config, tok: TextTokenizer):
    """The resolved model config, its vocabulary and pad id taken from the tokenizer."""
    m = cfg.model
    if m.vocab_size and m.vocab_size < tok.vocab_size:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tok.vocab_size}). Set it to 0 to take the tokenizer's size.",
                          culprit="model.vocab_size")
    return dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size,
                               pad_token_id=tok.pad_id or 0).resolved()


def check_batch(cfg: Config, mesh) -> None:
    """Refuse a batch size that does not split evenly over the mesh's data-parallel shards."""
    dp = data_parallel_size(mesh, cfg.mesh.rules)
    per_micro = cfg.train.batch_size // cfg.train.grad_accum
    if per_micro % dp:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} (per micro-batch {per_micro}) does not divide "
            f"across the {dp} data-parallel shards of the mesh (mesh.data x mesh.fsdp). Use a batch "
            f"size that is a multiple of {dp * cfg.train.grad_accum}, or change the mesh.",
            culprit="train.batch_size")


def pretrain(cfg: Config, run_dir: str | None = None, *, overwrite: bool = False,
             show_progress: bool = True, stop_after: int | None = None,
             peak_flops: float | None = None) -> dict[str, Any]:
    """Pretrain (or resume pretraining) a language model; returns the run summary."""
    out_dir = resolve_run_dir(cfg, run_dir)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, num_devices=cfg.mesh.num_devices)
    check_batch(cfg, mesh)
    train_src, val_src = load_corpus(cfg)
    prepare_run_dir(cfg, out_dir, overwrite)
    tok = setup_tokenizer(cfg, out_dir, train_src)
    mcfg = model_config_for(cfg, tok)
    if cfg.train.task == "masked" and mcfg.causal:
        raise ConfigError("train.task: masked needs a bidirectional model, and this one is "
                          "causal. Use model.family: bert, or set model.causal: false.",
                          culprit="train.task")
    write_model_spec(out_dir, mcfg, cfg.train.task)
    data = lm_batches(cfg, tok, train_src, val_src, process_index=jax.process_index(),
                      process_count=jax.process_count())
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    T, B = cfg.data.seq_len, cfg.train.batch_size
    with use_mesh(mesh, cfg.mesh.rules):
        steps = compile_steps(lambda: build_model(mcfg, cfg.train.task, seed=cfg.train.seed),
                              tx, LOSSES[cfg.train.task], lr, mesh, seed=cfg.train.seed,
                              grad_accum=cfg.train.grad_accum, dropout=mcfg.dropout > 0,
                              rules=cfg.mesh.rules)
        iterator = iter(data.train)
        val = data.validation
        ckpt = Checkpointer(out_dir / "checkpoints", keep=cfg.train.keep_checkpoints,
                            async_save=cfg.train.async_checkpointing)
        state, start = restore_or_init(steps, ckpt, iterator)
        n_params = count_params(state["params"])
        if peak_flops is None:
            peak_flops = measure_peak_flops(mcfg.dtype) * mesh.size
        logger = MetricsLogger(out_dir, resumed_from=start)
        spec = LoopSpec(
            total_steps=cfg.train.steps, tokens_per_step=B * T,
            flops_per_step=flops_per_token(mcfg, T) * B * T, peak_flops=peak_flops,
            log_every=cfg.train.log_every, eval_every=cfg.train.eval_every,
            checkpoint_every=cfg.train.checkpoint_every,
            evaluate=lambda p: evaluate_batches(steps, p, val), show_progress=show_progress,
            stop_after=stop_after, on_nonfinite=cfg.train.on_nonfinite,
            preemption_check_every=cfg.train.preemption_check_every,
            extra_summary={"params": n_params, "resumed_from": start, "run_dir": str(out_dir),
                           "vocab_size": mcfg.vocab_size, "devices": mesh.size,
                           "mesh": dict(mesh.shape)})
        try:
            summary, state = run_loop(steps, state, start, iterator, ckpt, logger, spec)
        finally:
            logger.close()
            ckpt.close()
    if jax.process_index() == 0:
        write_summary(out_dir, summary)
    summary["state"] = state
    return summary
