"""Run directories written by jaxlm 0.1.0 (tests/fixtures/runs_v0_1_0) still load, evaluate,
predict, generate, describe and export with today's code, and give the numbers 0.1.0 gave."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.run import Run

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1_0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def runs(tmp_path):
    """A copy of the fixture runs (commands may write eval_*.json into a run)."""
    out = tmp_path / "runs"
    shutil.copytree(FIXTURES, out)
    return out


def test_old_model_json_says_objective_and_loads_as_task(runs):
    spec = json.loads((runs / "sst2_classifier" / "model.json").read_text())
    assert "objective" in spec and "task" not in spec  # the 0.1.0 format
    clf = Run(runs / "sst2_classifier").load()
    assert clf.task == "classification" and clf.class_names == ["0", "1"]
    assert clf.checkpoint == "best (step 2)"
    assert Run(runs / "sst2_classifier").load("latest").checkpoint == "step 4"
    lm = Run(runs / "char_causal").load()
    assert lm.task == "causal" and lm.checkpoint == "step 4" and lm.cfg.train.task == "causal"
    assert Run(runs / "char_causal").checkpoint_steps() == [4]
    assert Run(runs / "sst2_classifier").checkpoint_steps("best") == [2]


def test_old_classifier_predicts_what_it_predicted(runs):
    from jaxlm.inference import predict_proba

    for checkpoint, key in (("best", "probs_best"), ("latest", "probs_latest")):
        loaded = Run(runs / "sst2_classifier").load(checkpoint)
        probs = predict_proba(loaded, EXPECTED["sentences"])
        np.testing.assert_allclose(probs, EXPECTED[key], atol=1e-5, err_msg=checkpoint)


def test_old_lm_run_evaluates_every_token_as_before(runs, data_dir, tmp_path):
    from jaxlm.evaluation import evaluate_run

    text = tmp_path / "eval.txt"
    text.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:4000])
    report = evaluate_run(str(runs / "char_causal"), f"text:{text}", split="train", batch_size=8)
    want = EXPECTED["lm_eval_first_4000_chars"]
    assert report["tokens"] == want["tokens"], "jaxlm evaluate scores every token of the data"
    assert report["loss"] == pytest.approx(want["loss"], abs=1e-5)


def test_old_classifier_evaluates_and_old_lm_generates_as_before(runs, data_dir):
    from jaxlm.evaluation import evaluate_run
    from jaxlm.generate import generate
    from jaxlm.loading import load_model

    clf = evaluate_run(str(runs / "sst2_classifier"), f"labeled:{data_dir}/sst2", split="dev")
    assert clf["accuracy"] == pytest.approx(EXPECTED["sst2_dev"]["accuracy"])
    assert clf["loss"] == pytest.approx(EXPECTED["sst2_dev"]["loss"], abs=1e-5)
    lm = load_model(runs / "char_causal")
    assert generate(lm.model, lm.tokenizer, "ROMEO:", max_new_tokens=12,
                    temperature=0.0) == EXPECTED["greedy_romeo_12"]


def test_old_runs_through_the_command_line(runs, data_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("\n".join(EXPECTED["sentences"]) + "\n")
    assert main(["predict", "--run", str(runs / "sst2_classifier"), "--input",
                 str(tmp_path / "in.txt"), "--out", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([[r["probs"]["0"], r["probs"]["1"]] for r in rows],
                               EXPECTED["probs_best"], atol=1e-5)
    assert main(["generate", "--run", str(runs / "char_causal"), "--prompt", "ROMEO:",
                 "--max-new-tokens", "12", "--temperature", "0", "--no-stream"]) == 0
    assert "ROMEO:" + EXPECTED["greedy_romeo_12"] in capsys.readouterr().out
    assert main(["info", str(runs / "sst2_classifier")]) == 0
    out = capsys.readouterr().out
    assert "finetune (classification), finished" in out and "kept in best/" in out
    assert main(["runs", str(runs)]) == 0
    assert "char_causal" in capsys.readouterr().out
    assert main(["export", "--run", str(runs / "char_causal"), "--out",
                 str(tmp_path / "hf")]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["architectures"] == ["GPT2LMHeadModel"]
    # a classifier without BERT's pooler has no Hugging Face class: refused with the fix named
    assert main(["export", "--run", str(runs / "sst2_classifier"), "--out",
                 str(tmp_path / "hf2")]) == 2
    assert "Fine-tune with the pooler on" in capsys.readouterr().err
