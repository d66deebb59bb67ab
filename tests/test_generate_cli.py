"""`jaxlm generate` and the Python API on a tiny trained run; BLEU/ROUGE, and the evaluator
reproducing the run's validation loss."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.cli import main
from jaxlm.config import config_from_dict
from jaxlm.generate import Generator, generate
from jaxlm.loading import load_model
from jaxlm.data.lm_data import encode_stream, lm_eval_batches
from jaxlm.evaluation import Evaluator, evaluate_run
from jaxlm.generation.scoring import bleu_rouge
from jaxlm.run import Run
from jaxlm.tasks import CausalLMTask, token_loss
from jaxlm.train.pretrain import pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A 2-layer char GPT trained for 40 steps on the first 40k characters of Tiny Shakespeare
    (the `tiny_corpus` text); context 32, so long generations run in windows."""
    root = tmp_path_factory.mktemp("gen_run")
    corpus = root / "tiny.txt"
    corpus.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:40_000])
    cfg = config_from_dict({
        "name": "tiny", "model": {"num_layers": 2, "d_model": 64, "num_heads": 4, "max_len": 32},
        "data": {"train": f"text:{corpus}", "seq_len": 32},
        "optim": {"lr": 3e-3},
        "train": {"steps": 40, "batch_size": 16, "eval_every": 40, "log_every": 20,
                  "checkpoint_every": 40}})
    summary = pretrain(cfg, str(root / "run"), show_progress=False, peak_flops=1e12)
    return root / "run", summary, corpus


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["generate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_generates_past_the_context_deterministically(trained, capsys):
    run_dir, _, _ = trained
    args = ["--run", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "50",
            "--temperature", "0.8", "--top-k", "20", "--seed", "3"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) == len("ROMEO:") + 50
    assert run_cli(capsys, *args)[1] == out
    assert run_cli(capsys, *args[:-1], "4")[1] != out


def load_run(path):
    lm = load_model(path)
    return lm.model, lm.tokenizer, lm.model_cfg


def test_load_run_restores_the_trained_parameters(trained):
    run_dir, summary, _ = trained
    model, tok, cfg = load_run(run_dir)
    assert cfg.max_len == 32 and tok.vocab_size == cfg.vocab_size
    got = jax.tree.leaves(nnx.state(model, nnx.Param))
    want = jax.tree.leaves(summary["state"].params)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_python_api_streams_text(trained):
    model, tok, _ = load_run(trained[0])
    pieces: list[str] = []
    text = Generator(model, tok).generate("First Citizen:\n", max_new_tokens=40, temperature=0.0,
                                          on_text=lambda row, piece: pieces.append(piece),
                                          chunk=8)
    assert len(pieces) >= 5 and "".join(pieces) == text and len(text) == 40
    assert generate(model, tok, ["First Citizen:\n"], max_new_tokens=40, temperature=0.0) == [text]


def test_cli_prompt_file_scores_and_writes_jsonl(trained, capsys, tmp_path):
    run_dir, _, _ = trained
    (tmp_path / "prompts.txt").write_text("First Citizen:\n\nROMEO:\n")  # the blank line is skipped
    (tmp_path / "refs.txt").write_text("Before we proceed any further, hear me speak.\n"
                                       "But soft, what light through yonder window breaks?\n")
    code, out, err = run_cli(capsys, "--run", str(run_dir), "--prompt-file",
                             str(tmp_path / "prompts.txt"), "--reference-file",
                             str(tmp_path / "refs.txt"), "--max-new-tokens", "20",
                             "--temperature", "0", "--out", str(tmp_path / "out.jsonl"))
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["First Citizen:", "ROMEO:"]
    assert all(len(r["completion"]) == 20 for r in rows)
    assert "### 1\nROMEO:" + rows[1]["completion"] in out
    assert "scores: bleu" in out and "rougeL" in out


def test_cli_errors_name_the_culprit(trained, capsys, tmp_path):
    run_dir, _, _ = trained
    code, _, err = run_cli(capsys, "--run", str(tmp_path), "--prompt", "x")
    assert code == 2 and "neither a jaxlm run directory" in err
    (tmp_path / "refs.txt").write_text("one\ntwo\n")
    code, _, err = run_cli(capsys, "--run", str(run_dir), "--prompt", "x", "--reference-file",
                           str(tmp_path / "refs.txt"))
    assert code == 2 and "2 lines but there are 1 prompts" in err
    code, _, err = run_cli(capsys, "--run", str(run_dir), "--prompt", "x", "--top-p", "0")
    assert code == 2 and "top_p" in err


def test_bleu_and_rouge_use_the_reference_implementations():
    refs = ["the cat sat on the mat", "a quick brown fox"]
    perfect = bleu_rouge(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rougeL"] == pytest.approx(100.0)
    partial = bleu_rouge(["the cat sat on a mat", "a slow brown fox"], refs)
    assert 0 < partial["bleu"] < 100 and 0 < partial["rouge2"] < partial["rouge1"] < 100


def test_evaluation_reproduces_the_training_validation_loss(trained):
    """`evaluate_run` (`jaxlm evaluate`) on the run's own validation split and batches, and the
    Evaluator on a loaded model, give the run's final validation loss (the whole split)."""
    run_dir, summary, corpus = trained
    report = evaluate_run(str(run_dir), checkpoint="latest")
    assert report["split"] == "validation" and "40" in report["checkpoint"]
    assert report["loss"] == pytest.approx(summary["validation"]["loss"], abs=1e-4)
    assert report["perplexity"] == pytest.approx(np.exp(report["loss"]))
    text = corpus.read_text()
    val_tokens = encode_stream(load_run(run_dir)[1], text[int(len(text) * 0.9):])
    assert report["tokens"] == (len(val_tokens) - 1) // 32 * 32  # every window scored once

    model, tok, _ = load_run(run_dir)
    cfg = Run(run_dir).config()
    val_src = CausalLMTask.open_sources(cfg)["validation"]
    evaluator, params = Evaluator.for_model(model, token_loss)
    # other batch sizes score the same rows: sums, not per-batch means
    for batch_size in (0, 5):
        got = evaluator.mean_metrics(params, lm_eval_batches(cfg, tok, val_src,
                                                             batch_size=batch_size))
        assert got["loss"] == pytest.approx(summary["validation"]["loss"], abs=1e-4)
        assert got["tokens"] == report["tokens"]
        assert got["accuracy"] == pytest.approx(summary["validation"]["accuracy"], abs=1e-5)
