"""Evaluating a finished run on a dataset: classifiers get the full classification report,
language models loss and perplexity."""
from __future__ import annotations

import numpy as np

from jaxlm.errors import DataError
from jaxlm.inference import LoadedRun, load_run, predict_proba
from jaxlm.metrics import classification_report, perplexity


def _default_spec(run: LoadedRun, split: str) -> tuple[str, str]:
    d = run.cfg.data
    if split == "test" and d.test:
        return run.cfg.resolve_path(d.test), split
    if split == "validation" and d.validation:
        return run.cfg.resolve_path(d.validation), split
    return run.cfg.resolve_path(d.train), split


def evaluate_classifier_run(run: LoadedRun, spec: str, split: str, batch_size: int) -> dict:
    """Classification report (accuracy, per-class P/R/F1, confusion matrix, loss) of a classifier
    run on a dataset split."""
    from jaxlm.data.sources import SourceOptions, open_source

    src = open_source(spec, split, SourceOptions.from_config(run.cfg.data), run.class_names)
    if src.label_names is None:
        raise DataError(f"{src.name} has no labels to evaluate against.", culprit=spec)
    examples = [src[i] for i in range(len(src))]
    labels = np.array([e["label"] for e in examples])
    probs = predict_proba(run, [e["text"] for e in examples], batch_size)
    loss = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    report = classification_report(labels, probs.argmax(-1), len(run.class_names),
                                   run.class_names, loss)
    report.update({"data": spec, "split": src.split, "checkpoint": run.checkpoint})
    return report


def evaluate_lm_run(run: LoadedRun, spec: str, split: str, batch_size: int) -> dict:
    """Mean loss over every token of the text (non-overlapping windows), and perplexity."""
    import jax
    from flax import nnx

    from jaxlm.data.lm_data import mask_spec_for, token_stream
    from jaxlm.data.lm_pipeline import eval_batches
    from jaxlm.data.sources import SourceOptions, open_source
    from jaxlm.tasks import token_loss

    src = open_source(spec, split, SourceOptions.from_config(run.cfg.data))
    tokens = token_stream(run.tokenizer, src)
    batches = eval_batches(tokens, seq_len=run.cfg.data.seq_len, global_batch=batch_size,
                           mask=mask_spec_for(run.cfg, run.tokenizer), seed=run.cfg.train.seed + 7919)
    graphdef, params = nnx.split(run.model)
    step = jax.jit(lambda p, b: token_loss(nnx.merge(graphdef, p), b, None))
    loss_sum = weight = 0.0
    for b in batches:
        loss, aux = step(params, b)
        loss_sum += float(loss)
        weight += float(aux["weight"])
    mean = loss_sum / max(weight, 1.0)
    return {"loss": mean, "perplexity": perplexity(mean), "tokens": int(weight), "data": spec,
            "split": src.split, "checkpoint": run.checkpoint, "objective": run.objective}


def evaluate_run(run_dir: str, spec: str | None = None, *, split: str = "test",
                 checkpoint: str = "best", batch_size: int = 64) -> dict:
    """`jaxlm evaluate`: a classifier's report or a language model's loss and perplexity on a
    dataset (default: the run's test split, else validation)."""
    run = load_run(run_dir, checkpoint)
    if spec is None:
        spec, split = _default_spec(run, split)
    if run.objective == "classification":
        return evaluate_classifier_run(run, spec, split, batch_size)
    return evaluate_lm_run(run, spec, split, batch_size)
