"""Bad input to generative fine-tuning and to the commands that read generative runs: each is one
paragraph on stderr naming the culprit and the fix, exit code 2, no traceback, and nothing
written: an existing run directory the command points at keeps every file and folder (names,
mtimes, bytes), and a new run directory is not created."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from cli_utils import run_cli as _run  # noqa: E402

GEN = {"name": "gen_errors",
       "model": {"family": "gpt2", "num_layers": 2, "d_model": 32, "num_heads": 2, "max_len": 32},
       "data": {"seq_len": 32, "tokenizer": {"kind": "char"}},
       "optim": {"lr": 1e-3, "warmup_steps": 1}, "mesh": {"num_devices": 1},
       "train": {"task": "generative", "steps": 2, "batch_size": 8, "eval_every": 0,
                 "log_every": 1, "checkpoint_every": 2}}
BERT = {"name": "bert_mlm",
        "model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
        "data": {"seq_len": 32, "tokenizer": {"kind": "char"}}, "mesh": {"num_devices": 1},
        "train": {"task": "masked", "steps": 2, "batch_size": 8, "eval_every": 0, "log_every": 1,
                  "checkpoint_every": 2}}
EXISTING = ("gen", "bert")  # finished runs that no failing command may change


def _records(n: int, rng: random.Random) -> list[dict[str, str]]:
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(n)]
    return [{"input": w, "output": w[::-1]} for w in words]


def _jsonl(folder: Path, split: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """A finished generative run (gen), a finished masked BERT run (bert), and bad datasets."""
    from jaxlm.config import config_from_dict
    from jaxlm.train.finetune import finetune
    from jaxlm.train.pretrain import pretrain

    w = tmp_path_factory.mktemp("gen_errors")
    rng = random.Random(0)
    for split, n in (("train", 64), ("dev", 8), ("test", 8)):
        _jsonl(w / "good", split, _records(n, rng))
    _jsonl(w / "nofields", "train", [{"question": r["input"], "answer": r["output"]}
                                     for r in _records(40, rng)])
    _jsonl(w / "allempty", "train", [{**r, "output": ""} for r in _records(40, rng)])
    some = _records(40, rng)
    some[3]["output"], some[7]["output"] = "", "   "
    _jsonl(w / "someempty", "train", some)
    long = _records(40, rng)
    for i in (2, 5, 9):
        long[i]["input"] = "x" * 60  # prompt + target + end > seq_len + 1
    _jsonl(w / "long", "train", long)
    (w / "corpus.txt").write_text(" ".join(r["input"] for r in _records(3000, rng)))
    gen = {**GEN, "data": {**GEN["data"], "train": f"jsonl:{w}/good"}}
    (w / "gen.yaml").write_text(yaml.safe_dump(gen))
    (w / "init.yaml").write_text(yaml.safe_dump({k: v for k, v in gen.items() if k != "model"}))
    finetune(config_from_dict(gen), str(w / "gen"), show_progress=False)
    pretrain(config_from_dict({**BERT, "data": {**BERT["data"], "train": f"text:{w}/corpus.txt"}}),
             str(w / "bert"), show_progress=False)
    # a run whose prompt template names two fields (its model.json head, as training writes it)
    shutil.copytree(w / "gen", w / "gen2")
    spec = json.loads((w / "gen2" / "model.json").read_text())
    spec["head"]["templates"]["prompt"] = "{input} in {lang}\n"
    (w / "gen2" / "model.json").write_text(json.dumps(spec))
    (w / "norecord.txt").write_text('{"text": "abc"}\n')
    (w / "plain.txt").write_text("abc\n")
    return w


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (root included): kind, mtime, and a file's bytes."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.stat()
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_mtime_ns,
                                         None if p.is_dir() else p.read_bytes())
    return out


def _fails_cleanly(w: Path, argv: list[str], expected: list[str]) -> str:
    """Run a command that must fail: exit 2, one paragraph holding `expected`, no traceback,
    every existing run unchanged. Returns the message."""
    before = {d: _snapshot(w / d) for d in EXISTING}
    code, err = _run([a.replace("{W}", str(w)) for a in argv])
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index(f"jaxlm {argv[0]}: error: "):]
    assert message.endswith("\n") and message.count("\n") == 1, message  # one paragraph
    for s in expected:
        assert s.replace("{W}", str(w)) in message, message
    assert {d: _snapshot(w / d) for d in EXISTING} == before
    return message


FT = ["finetune", "--config", "{W}/gen.yaml", "--quiet"]
TRAINING_CASES = [  # (id, arguments, what the message must say)
    ("records lack the named fields", ["--set", "data.train=jsonl:{W}/nofields"],
     ["36 of 36 records lack the fields 'input', 'output'", "nofields/train.jsonl:1",
      "the records have question, answer", "generative.prompt_template"]),
    ("every target empty", ["--set", "data.train=jsonl:{W}/allempty"],
     ["36 of 36 records have an empty target", "allempty/train.jsonl:1", "Fix the data"]),
    ("some targets empty, on_invalid error", ["--set", "data.train=jsonl:{W}/someempty",
                                              "--set", "data.on_invalid=error"],
     ["2 of 36 records have an empty target", "someempty/train.jsonl:4",
      "data.on_invalid: report"]),
    ("prompts longer than seq_len", ["--set", "data.train=jsonl:{W}/long"],
     ["3 of 36 records do not fit data.seq_len=32", "long/train.jsonl:3",
      "generative.overlong: truncate_left", "skip", "Raise data.seq_len"]),
    ("template names a missing field", ["--set", "generative.prompt_template=Q: {question}\n"],
     ["lack the field 'question'", "the records have input, output",
      "generative.prompt_template"]),
    ("positional template", ["--set", "generative.prompt_template={}"],
     ["generative.prompt_template", "placeholder {}", "{input}"]),
    ("bert model", ["--set", "model.family=bert"],
     ["bert model is bidirectional", "model.family: gpt2 or llama"]),
]


@pytest.mark.parametrize("where", ["existing run", "new run"])
@pytest.mark.parametrize("case", TRAINING_CASES, ids=[c[0] for c in TRAINING_CASES])
def test_bad_training_input(w, case, where):
    _, args, expected = case
    target = w / ("gen" if where == "existing run" else f"new_{TRAINING_CASES.index(case)}")
    _fails_cleanly(w, FT + ["--run", str(target)] + args, expected)
    assert where == "existing run" or not target.exists()


@pytest.mark.parametrize("where", ["existing run", "new run"])
def test_masked_lm_as_init_from(w, where):
    target = w / ("gen" if where == "existing run" else "new_init")
    message = _fails_cleanly(w, ["finetune", "--config", "{W}/init.yaml", "--quiet", "--run",
                                 str(target), "--init-from", "{W}/bert"],
                             ["finetune.init_from '{W}/bert' holds a bert model",
                              "bidirectional", "Start from a causal"])
    assert "hf:gpt2" in message
    assert where == "existing run" or not target.exists()


def test_resume_with_other_templates_is_refused(w):
    """The templates and packing decide what the examples are: a finished run is not resumed
    (and its model.json not rewritten) with other ones."""
    for args, key in ((["--set", "generative.prompt_template=Q: {input}\n"],
                       "generative.prompt_template"),
                      (["--set", "generative.packing=false"], "generative.packing")):
        _fails_cleanly(w, FT + ["--run", "{W}/gen", "--set", "train.steps=4"] + args,
                       [f"{key} differ", "--overwrite"])


READ_CASES = [  # (id, argv, what the message must say): commands reading a generative run
    ("predict a record without the prompt field",
     ["predict", "--run", "{W}/gen", "--input", "{W}/norecord.txt"],
     ["norecord.txt:1 lacks the field 'input'", "the record has text"]),
    ("predict plain text for a two-field prompt",
     ["predict", "--run", "{W}/gen2", "--input", "{W}/plain.txt"],
     ["plain.txt:1 is plain text", "names 2 fields (input, lang)", '{"input": "...", "lang"']),
    ("evaluate records without the fields",
     ["evaluate", "--run", "{W}/gen", "--data", "jsonl:{W}/nofields/train.jsonl"],
     ["lack the fields 'input', 'output'", "the records have question, answer"]),
    ("evaluate with a negative temperature",
     ["evaluate", "--run", "{W}/gen", "--temperature", "-1"],
     ["temperature must be >= 0", "--temperature"]),
    ("evaluate a masked LM with sampling options",
     ["evaluate", "--run", "{W}/bert", "--temperature", "0.5"],
     ["holds a masked model", "Leave them out"]),
    ("predict with a masked LM and sampling options",
     ["predict", "--run", "{W}/bert", "--input", "{W}/plain.txt", "--top-k", "3"],
     ["--top-k", "masked model, which does not generate"]),
]


@pytest.mark.parametrize("case", READ_CASES, ids=[c[0] for c in READ_CASES])
def test_bad_input_to_commands_reading_a_generative_run(w, case):
    _, argv, expected = case
    before = _snapshot(w / "gen2")
    _fails_cleanly(w, argv, expected)
    assert _snapshot(w / "gen2") == before
