"""`jaxlm pretrain`: language-model pretraining from a config."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.data.lm_pipeline import eval_batches, train_dataset
from jaxlm.data.text import parse_text_spec, read_text
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
from jaxlm.train.run_dir import prepare_run_dir, resolve_run_dir, write_summary
from jaxlm.train.steps import compile_steps


def load_corpus(cfg: Config) -> tuple[str, str]:
    """(train text, validation text): a separate file, or the last val_fraction of the corpus."""
    d = cfg.data
    text = read_text(parse_text_spec(cfg.resolve_path(d.train)), d.encoding, "training data file")
    if d.validation:
        val = read_text(parse_text_spec(cfg.resolve_path(d.validation)), d.encoding,
                        "validation data file")
        return text, val
    cut = int(len(text) * (1.0 - d.val_fraction))
    return text[:cut], text[cut:]


def setup_tokenizer(cfg: Config, run_dir: Path, train_text: str) -> TextTokenizer:
    """The run's tokenizer: the one saved in the run directory, a given file, or a new one."""
    saved = run_dir / "tokenizer.json"
    if saved.is_file():
        return TextTokenizer(load_tokenizer(saved))
    t = cfg.data.tokenizer
    tok = load_tokenizer(cfg.resolve_path(t.path)) if t.path else train_tokenizer(
        iter_chunks(train_text), t.kind, t.vocab_size)
    tok.save(str(saved))
    return TextTokenizer(tok)


def encode_stream(tok: TextTokenizer, text: str) -> np.ndarray:
    """Tokenize a long text in line-aligned pieces (in parallel) into one int32 stream."""
    lines = text.splitlines(keepends=True)
    pieces = ["".join(lines[i:i + 256]) for i in range(0, len(lines), 256)]
    ids = tok.encode_batch(pieces)
    return np.fromiter((i for seq in ids for i in seq), dtype=np.int32)


def model_config_for(cfg: Config, tok: TextTokenizer):
    m = cfg.model
    if m.vocab_size and m.vocab_size < tok.vocab_size:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tok.vocab_size}). Set it to 0 to take the tokenizer's size.",
                          culprit="model.vocab_size")
    return dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size,
                               pad_token_id=tok.pad_id or 0).resolved()


def check_batch(cfg: Config, mesh) -> None:
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
    train_text, val_text = load_corpus(cfg)
    prepare_run_dir(cfg, out_dir, overwrite)
    tok = setup_tokenizer(cfg, out_dir, train_text)
    train_tokens, val_tokens = encode_stream(tok, train_text), encode_stream(tok, val_text)
    mcfg = model_config_for(cfg, tok)
    tx, lr = build_optimizer(cfg.optim, cfg.train.steps)
    T, B = cfg.data.seq_len, cfg.train.batch_size
    with use_mesh(mesh, cfg.mesh.rules):
        steps = compile_steps(lambda: build_model(mcfg, cfg.train.objective, seed=cfg.train.seed),
                              tx, LOSSES[cfg.train.objective], lr, mesh, seed=cfg.train.seed,
                              grad_accum=cfg.train.grad_accum, dropout=mcfg.dropout > 0,
                              rules=cfg.mesh.rules)
        ds = train_dataset(train_tokens, seq_len=T, global_batch=B, num_steps=cfg.train.steps,
                           seed=cfg.train.seed, sampling=cfg.data.sampling,
                           process_index=jax.process_index(), process_count=jax.process_count())
        iterator = iter(ds)
        val = eval_batches(val_tokens, seq_len=T, global_batch=cfg.train.eval_batch_size or B,
                           max_batches=cfg.train.eval_batches, process_index=jax.process_index(),
                           process_count=jax.process_count())
        ckpt = Checkpointer(out_dir / "checkpoints", keep=cfg.train.keep_checkpoints,
                            async_save=cfg.train.async_checkpointing)
        state, start = restore_or_init(steps, ckpt, iterator)
        n_params = count_params(state["params"])
        if peak_flops is None:
            peak_flops = measure_peak_flops(mcfg.dtype) * mesh.size
        logger = MetricsLogger(out_dir)
        spec = LoopSpec(
            total_steps=cfg.train.steps, tokens_per_step=B * T,
            flops_per_step=flops_per_token(mcfg, T) * B * T, peak_flops=peak_flops,
            log_every=cfg.train.log_every, eval_every=cfg.train.eval_every,
            checkpoint_every=cfg.train.checkpoint_every,
            evaluate=lambda p: evaluate_batches(steps, p, val), show_progress=show_progress,
            stop_after=stop_after,
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
