"""`jaxlm evaluate`, `predict`, `generate`, `export` and `info` on a generative fine-tuning run
(train.task: generative). One tiny run (a word -> 'vowel' / 'consonant' task, so the targets are
also scored as labels) is trained once for the module, on the 8 fake CPU devices (data parallel):
evaluation and prediction take the mesh path."""
from __future__ import annotations

import copy
import io
import json
import random
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from jaxlm.cli import main

CFG = {"name": "gen_cli",
       "model": {"family": "gpt2", "num_layers": 2, "d_model": 32, "num_heads": 2, "max_len": 32},
       "data": {"seq_len": 32, "tokenizer": {"kind": "char"}},
       "optim": {"lr": 3e-3, "warmup_steps": 2},
       "train": {"task": "generative", "steps": 12, "batch_size": 8, "eval_every": 6,
                 "eval_batches": 1, "log_every": 6, "checkpoint_every": 6},
       "generative": {"prompt_template": "Word: {word}\n", "target_template": "{kind}"}}


def make_records(n: int, seed: int) -> list[dict[str, str]]:
    """Random lowercase words and whether they start with a vowel."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
        out.append({"word": word, "kind": "vowel" if word[0] in "aeiou" else "consonant"})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root: (mtime, bytes)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> SimpleNamespace:
    from jaxlm.config import config_from_dict
    from jaxlm.train.finetune import finetune

    root = tmp_path_factory.mktemp("gen_cli")
    data = root / "data"
    for split, n, seed in (("train", 160, 0), ("dev", 16, 1), ("test", 24, 2)):
        write_jsonl(data / f"{split}.jsonl", make_records(n, seed))
    cfg = copy.deepcopy(CFG)
    cfg["data"]["train"] = f"jsonl:{data}"
    summary = finetune(config_from_dict(cfg), str(root / "run"), show_progress=False)
    return SimpleNamespace(root=root, data=data, run=root / "run", cfg=cfg, summary=summary)


def _evaluate(argv: list[str]) -> tuple[dict, str]:
    code, out, err = run_cli(["evaluate", *argv])
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
    return json.loads(path.read_text()), out


def test_evaluate_default_split_reproduces_the_final_test_report(gen, tmp_path):
    before = snapshot(gen.run)
    report, out = _evaluate(["--run", str(gen.run), "--out", str(tmp_path / "e.json")])
    final = gen.summary["test"]
    assert report["split"] == "test" and report["task"] == "generative"
    assert report["examples"] == 24 == len(report["predictions"])  # the whole split
    for key in ("loss", "tokens", "exact_match", "bleu", "rougeL", "accuracy", "macro_f1"):
        assert report[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key
    assert report["predictions"] == final["predictions"]
    assert report["predictions"][0]["prompt"].startswith("Word: ")
    head = json.loads((gen.run / "model.json").read_text())["head"]
    assert report["generation"] == {"max_new_tokens": head["max_new_tokens"], **head["sampling"]}
    assert head["sampling"]["temperature"] == 0.0  # greedy unless configured otherwise
    assert "exact match" in out and "as labels: accuracy" in out  # format_report's table
    assert snapshot(gen.run) == before  # --out elsewhere: the run is only read


def test_evaluate_without_test_split_uses_validation_and_names_the_report(gen, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(gen.data, data)
    (data / "test.jsonl").unlink()
    run = tmp_path / "run"
    shutil.copytree(gen.run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["train"] = f"jsonl:{data}"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for p in run.glob("eval_*.json"):
        p.unlink()
    report, _ = _evaluate(["--run", str(run)])
    assert report["split"] == "validation" and report["examples"] == 16
    assert (run / "eval_validation.json").is_file() and not (run / "eval_test.json").exists()
    assert report["loss"] == pytest.approx(gen.summary["validation"]["loss"], rel=1e-6)
    assert report["predictions"] == gen.summary["validation"]["predictions"]


def test_evaluate_other_data_in_whole_with_sampling_overrides(gen, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", make_records(5, 9))
    before = snapshot(gen.run)
    greedy, _ = _evaluate(["--run", str(gen.run), "--data", f"jsonl:{other}",
                           "--out", str(tmp_path / "g.json")])
    assert greedy["examples"] == 5 and greedy["data"].startswith(f"jsonl:{other}")
    assert [p["prompt"] for p in greedy["predictions"]] == [
        f"Word: {r['word']}\n" for r in make_records(5, 9)]
    sampled = []
    for name in ("s1", "s2"):
        report, _ = _evaluate(["--run", str(gen.run), "--data", f"jsonl:{other}", "--out",
                               str(tmp_path / f"{name}.json"), "--temperature", "1.5",
                               "--top-k", "5", "--top-p", "0.9", "--seed", "7",
                               "--max-new-tokens", "2"])
        sampled.append(report)
    assert sampled[0]["generation"] == {"max_new_tokens": 2, "temperature": 1.5, "top_k": 5,
                                        "top_p": 0.9, "seed": 7}
    assert sampled[0]["predictions"] == sampled[1]["predictions"]  # seeded: reproducible
    # at most 2 new (char) tokens; a special token such as [UNK] decodes to its name
    assert all(len(p["output"].replace("[UNK]", "?")) <= 2 for p in sampled[0]["predictions"])
    assert sampled[0]["loss"] == greedy["loss"]  # sampling changes generation only
    assert snapshot(gen.run) == before  # overrides are not saved into the run


def test_evaluate_on_a_sharded_mesh_matches_data_parallel(gen, tmp_path):
    """The run's mesh from config.yaml (here data 2 x fsdp 2 x tensor 2): parameters sharded
    as in training, for the loss sums and for generation."""
    run = tmp_path / "run"
    shutil.copytree(gen.run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["mesh"].update(data=2, fsdp=2, tensor=2)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    report, _ = _evaluate(["--run", str(run), "--out", str(tmp_path / "e.json")])
    final = gen.summary["test"]
    assert report["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert [p["output"] for p in report["predictions"]] == [
        p["output"] for p in final["predictions"]]


def test_predict_generates_from_records_and_plain_lines_as_training_prompts(gen, tmp_path):
    test = [json.loads(line) for line in (gen.data / "test.jsonl").read_text().splitlines()]
    lines = []
    for i, r in enumerate(test[:8]):  # plain text, JSON records without the target, blank lines
        lines.append(r["word"] if i % 2 else json.dumps({"word": r["word"], "id": i}))
        lines.append("" if i == 3 else None)
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(x for x in lines if x is not None) + "\n")
    before = snapshot(gen.run)
    code, _, err = run_cli(["predict", "--run", str(gen.run), "--input", str(inp), "--out",
                            str(tmp_path / "p.jsonl"), "--batch-size", "3"])
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert rows[1]["input"] == test[1]["word"] and rows[0]["input"] == {"word": test[0]["word"],
                                                                        "id": 0}
    # greedy with the run's settings: exactly what evaluation generated from the training prompts
    expected = [p["output"] for p in gen.summary["test"]["predictions"][:8]]
    assert [r["output"] for r in rows] == expected
    assert snapshot(gen.run) == before


@pytest.mark.parametrize("chat", [None, "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                                        "{% endfor %}{% if add_generation_prompt %}<assistant>"
                                        "{% endif %}"], ids=["plain", "chat"])
def test_encode_prompts_gives_the_training_prompt_ids(gen, chat):
    from jaxlm.data.generative import encode_pairs, encode_prompts
    from jaxlm.data.records import open_records
    from jaxlm.data.sources import parse_spec
    from jaxlm.data.templates import Templates
    from jaxlm.run import Run

    tok = Run(gen.run).tokenizer()
    templates = Templates("Word: {word}\n", "{kind}", chat)
    source = open_records(parse_spec(f"jsonl:{gen.data}"), "test")
    pairs = encode_pairs(source, tok, templates, seq_len=64)
    records = [{"word": source[i]["word"]} for i in range(len(source))]  # no target field
    assert encode_prompts(records, tok, templates) == [pairs.prompt_ids(i)
                                                       for i in range(len(pairs))]
    if chat:
        assert pairs.prompts[0].startswith("<user>Word: ")


def test_generate_accepts_a_generative_run(gen, tmp_path):
    word = json.loads((gen.data / "test.jsonl").read_text().splitlines()[0])["word"]
    out = tmp_path / "g.jsonl"
    code, _, err = run_cli(["generate", "--run", str(gen.run), "--prompt", f"Word: {word}\n",
                            "--temperature", "0", "--max-new-tokens",
                            str(json.loads((gen.run / "model.json").read_text())["head"]
                                ["max_new_tokens"]), "--out", str(out), "--no-stream"])
    assert code == 0, err
    row = json.loads(out.read_text())
    # the raw continuation of the training prompt is what predict and evaluate generate
    assert row["completion"] == gen.summary["test"]["predictions"][0]["output"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_export_writes_a_causal_lm_that_transformers_loads(gen, tmp_path, family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxlm.loading import load_model

    run = gen.run
    if family == "llama":  # untied LM head, rotary positions: a second tiny run
        from jaxlm.config import config_from_dict
        from jaxlm.train.finetune import finetune
        cfg = copy.deepcopy(gen.cfg)
        cfg["model"]["family"] = "llama"
        cfg["train"].update(steps=2, eval_every=0, checkpoint_every=2)
        run = tmp_path / "llama_run"
        finetune(config_from_dict(cfg), str(run), show_progress=False)
    code, out, err = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "hf")])
    assert code == 0, err
    arch = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[family]
    assert f"as {arch}" in out
    hf = getattr(transformers, arch).from_pretrained(str(tmp_path / "hf")).eval()
    lm = load_model(run)
    ids = np.asarray([lm.tokenizer.encode("Word: apple\nvowel"),
                      lm.tokenizer.encode("Word: stone\nconso")], np.int32)
    ours = np.asarray(lm.model(ids))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5


def test_info_describes_a_generative_run(gen):
    code, out, err = run_cli(["info", "--run", str(gen.run)])
    assert code == 0, err
    assert "finetune (generative), finished" in out
    assert "templates:   prompt 'Word: {word}\\n' -> target '{kind}'" in out
    assert "labels:      2 targets: consonant, vowel" in out
    assert "generation:  up to " in out and "greedy" in out
    assert "exact_match" in out  # the final reports' generation scores
    code, out, _ = run_cli(["info", "--run", str(gen.run), "--json"])
    info = json.loads(out)
    assert info["kind"] == "finetune" and info["task"] == "generative"
    assert info["final"]["test"]["exact_match"] == gen.summary["test"]["exact_match"]
