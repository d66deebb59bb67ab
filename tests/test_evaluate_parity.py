"""`jaxlm evaluate` on a finished pretraining run reproduces the run's own final validation loss
exactly: the same task evaluation, data and batches (windows or packed documents, masked-LM
masking included), through the one evaluator."""
import json

import pytest

from jaxlm.cli import main
from jaxlm.config import config_from_dict
from jaxlm.train.pretrain import pretrain


def _pretrain(root, corpus, data: dict, task: str = "causal", family: str = "gpt2") -> dict:
    cfg = config_from_dict({
        "name": "parity", "model": {"family": family, "num_layers": 1, "d_model": 32,
                                    "num_heads": 2, "max_len": 32},
        "data": {"train": f"text:{corpus}", "seq_len": 32, **data},
        "optim": {"lr": 3e-3},
        "train": {"task": task, "steps": 12, "batch_size": 8, "eval_batch_size": 16,
                  "eval_every": 12, "log_every": 6, "checkpoint_every": 12}})
    return pretrain(cfg, str(root / "run"), show_progress=False, peak_flops=1e12)


def _evaluate(root, capsys, *extra: str) -> dict:
    out = root / "eval.json"
    assert main(["evaluate", "--run", str(root / "run"), "--out", str(out), *extra]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


@pytest.mark.parametrize("data, task, family", [
    ({"sampling": "random_windows"}, "causal", "gpt2"),
    ({"sampling": "packed", "documents": "line"}, "causal", "llama"),
    ({"sampling": "packed", "documents": "line"}, "masked", "bert"),
], ids=["windows", "packed", "packed-masked"])
def test_evaluate_reproduces_the_final_validation_loss(tmp_path, tiny_corpus, capsys, data, task,
                                                       family):
    summary = _pretrain(tmp_path, tiny_corpus, data, task, family)
    report = _evaluate(tmp_path, capsys)
    assert report["split"] == "validation" and report["task"] == task
    assert report["loss"] == summary["val"]["loss"]  # exactly, not approximately
    assert report["perplexity"] == summary["val"]["perplexity"]
    # another batching scores the same tokens once each: the same loss up to float32 sums
    other = _evaluate(tmp_path, capsys, "--batch-size", "24")
    assert other["tokens"] == report["tokens"] > 0
    assert other["loss"] == pytest.approx(report["loss"], rel=1e-5)
