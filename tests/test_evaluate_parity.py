"""`jaxlm evaluate` on a finished pretraining run reproduces the run's own final validation loss
(its report on the whole validation split) exactly: the same task evaluation, data and batches (windows or packed documents, masked-LM
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
    # the final report scores the whole split; validation during training scored a sample
    whole = summary["validation"]
    assert report["loss"] == whole["loss"]  # exactly, not approximately
    assert report["perplexity"] == whole["perplexity"]
    assert report["tokens"] == whole["tokens"] > 0
    # another batching scores the same tokens once each: the same loss up to float32 sums
    other = _evaluate(tmp_path, capsys, "--batch-size", "24")
    assert other["tokens"] == report["tokens"] > 0
    assert other["loss"] == pytest.approx(report["loss"], rel=1e-5)


def test_validation_during_training_is_a_sample_unless_eval_batches_asks(tmp_path, tiny_corpus):
    """train.eval_batches: 0 (auto) validates on a tenth of the rows trained between two
    validations (at least one batch); -1 on the whole split, N on N batches."""
    from jaxlm.config import config_from_dict
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
    from jaxlm.tasks.language_model import CausalLMTask

    def batches(**train) -> int:
        cfg = config_from_dict({
            "data": {"train": f"text:{tiny_corpus}", "seq_len": 16},
            "train": {"steps": 10, "batch_size": 4, "eval_every": 50, **train}})
        task = CausalLMTask()
        src = task.open_sources(cfg)["validation"]
        tok = TextTokenizer(train_tokenizer(task.tokenizer_texts(src), "char"))
        return len(task.validation_batches(cfg, tok, src))

    whole = -(-((4_000 - 1) // 16) // 4)  # 10% of 40k characters in 16-windows, 4 per batch
    assert batches(eval_batches=-1) == whole
    assert batches() == 5  # ceil(50 * 4 / 10 / 4)
    assert batches(eval_batches=3) == 3
    assert batches(eval_batch_size=8) == 3  # ceil(20 rows / 8)


def test_the_last_validation_scores_the_whole_split_once(tmp_path, tiny_corpus,
                                                        count_evaluations):
    """Validation at the last step scores the whole split, which is the final report: no sample
    at that step and no second pass over the split with the same parameters."""
    from jaxlm.tasks.language_model import CausalLMTask

    scored = count_evaluations(CausalLMTask)
    cfg = config_from_dict({
        "name": "last", "model": {"family": "gpt2", "num_layers": 1, "d_model": 32,
                                  "num_heads": 2, "max_len": 16},
        "data": {"train": f"text:{tiny_corpus}", "seq_len": 16},
        "optim": {"lr": 3e-3},
        "train": {"steps": 8, "batch_size": 8, "eval_every": 4, "log_every": 4,
                  "checkpoint_every": 8}})
    summary = pretrain(cfg, str(tmp_path / "run"), show_progress=False, peak_flops=1e12)
    windows = (4_000 - 1) // 16  # every 16-window of the 4,000 validation characters, once
    assert scored == [1, -(-windows // 8)]  # a sample at step 4 (ceil(4 * 8 / 10 / 8)), all at 8
    logs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    val = [m for m in logs if m["split"] == "val"]
    final = [m for m in logs if m["split"] == "final_validation"]
    assert [m["step"] for m in val] == [4, 8] and final[0]["step"] == 8
    assert val[-1]["loss"] == final[0]["loss"] == summary["validation"]["loss"]
    assert summary["val"]["loss"] == summary["validation"]["loss"]
    assert summary["validation"]["tokens"] == windows * 16
