"""The bad-input catalogue: each wrong input to each command is a clear one-paragraph error that
names the culprit, exits with code 2, prints no traceback, and leaves every existing run directory
byte for byte unchanged. (tests/test_cli.py covers nine more pretrain cases.)"""
import hashlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from jaxlm.cli import main

TINY = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2,
                  "max_len": 32},
        "data": {"seq_len": 32}, "mesh": {"num_devices": 1},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 0, "log_every": 2,
                  "checkpoint_every": 4}}
CLF = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 64},
       "data": {"seq_len": 32, "tokenizer": {"kind": "wordpiece", "vocab_size": 300}},
       "mesh": {"num_devices": 1},
       "train": {"task": "classification", "steps": 4, "batch_size": 8, "eval_every": 4,
                 "log_every": 2, "checkpoint_every": 4}}
EXISTING = ("lm", "clf", "lm_badcfg", "hf_lm", "notrun")  # folders no bad input may change


def _write(path: Path, data) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory, data_dir) -> Path:
    """A workspace: a finished LM run, a finished classifier run, an HF export, bad files."""
    import shutil

    from jaxlm.config import config_from_dict
    from jaxlm.train.finetune import finetune
    from jaxlm.train.pretrain import pretrain

    w = tmp_path_factory.mktemp("catalogue")
    corpus = _write(w / "corpus.txt", (data_dir / "tinyshakespeare/input.txt").read_text()[:40_000])
    sst = w / "sst"
    sst.mkdir()
    for name, n in (("train.txt", 200), ("dev.txt", 50), ("test.txt", 50)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        _write(sst / name, "\n".join(lines) + "\n")
    lm = {**TINY, "data": {**TINY["data"], "train": f"text:{corpus}"}}
    _write(w / "tiny.yaml", lm)
    _write(w / "clf.yaml", {**CLF, "data": {**CLF["data"], "train": f"labeled:{sst}"}})
    pretrain(config_from_dict(lm), str(w / "lm"), show_progress=False)
    finetune(config_from_dict({**CLF, "data": {**CLF["data"], "train": f"labeled:{sst}"}}),
             str(w / "clf"), show_progress=False)
    assert _run(["export", "--run", str(w / "lm"), "--out", str(w / "hf_lm")])[0] == 0
    shutil.copytree(w / "lm", w / "lm_badcfg")
    _write(w / "lm_badcfg" / "config.yaml", "model: {d_model: [\n")  # a torn config.yaml
    (w / "notrun").mkdir()
    _write(w / "notrun" / "notes.txt", "not a run")
    _write(w / "badyaml.yaml", "model: [1, 2\n")
    _write(w / "list.yaml", "- model\n- train\n")
    _write(w / "evil.yaml", f'!!python/object/apply:os.system ["touch {w}/PWNED"]\n')
    _write(w / "latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))
    _write(w / "badtok.json", "not json")
    hf = json.loads((w / "hf_lm" / "config.json").read_text())
    (w / "hf_automap").mkdir()
    _write(w / "hf_automap" / "config.json",
           json.dumps({**hf, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    _evil_pickle(w)
    _evil_tfds(w)
    return w


def _evil_pickle(w: Path) -> None:
    """A pytorch_model.bin whose pickle would run a shell command when unpickled."""
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w}/PWNED",))

    (w / "hf_pickle").mkdir()
    _write(w / "hf_pickle" / "config.json", (w / "hf_lm" / "config.json").read_text())
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": Evil()},
               w / "hf_pickle" / "pytorch_model.bin")


def _evil_tfds(w: Path) -> None:
    """A prepared TFDS folder whose features.json names a module outside TFDS."""
    from jaxlm.data.tfds_build import build_dataset
    build_dataset("evil_ds", {"train": str(w / "sst" / "dev.txt")}, str(w / "tfds"))
    feats = next((w / "tfds" / "evil_ds").glob("*/features.json"))
    feats.write_text(feats.read_text().replace(
        "tensorflow_datasets.core.features.text_feature.Text", "evil_module.Text"))


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, err.getvalue()


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


P = ["pretrain", "--config", "{W}/tiny.yaml", "--quiet"]
F = ["finetune", "--config", "{W}/clf.yaml", "--quiet"]
CASES = [  # (id, argv, substrings the message must hold)
    # pretrain: config files, run directories, data, tokenizer, model/task
    ("config file missing", ["pretrain", "--config", "{W}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("config not YAML", ["pretrain", "--config", "{W}/badyaml.yaml"], ["badyaml.yaml", "not valid YAML"]),
    ("config not a mapping", ["pretrain", "--config", "{W}/list.yaml"], ["list.yaml", "mapping"]),
    ("config with a python tag", ["pretrain", "--config", "{W}/evil.yaml"],
     ["evil.yaml", "not valid YAML"]),
    ("run dir is a file", P + ["--run", "{W}/corpus.txt"], ["corpus.txt", "is a file"]),
    ("run dir not a run", P + ["--run", "{W}/notrun"], ["notrun", "not empty", "--overwrite"]),
    ("resume a torn config.yaml", P + ["--run", "{W}/lm_badcfg"],
     ["lm_badcfg/config.yaml", "damaged"]),
    ("bad on_nonfinite", P + ["--set", "train.on_nonfinite=sometimes"],
     ["train.on_nonfinite", "stop, skip"]),
    ("checkpoint_every 0", P + ["--set", "train.checkpoint_every=0"],
     ["train.checkpoint_every", "positive"]),
    ("data not utf-8", P + ["--run", "{W}/new", "--set", "data.train=text:{W}/latin1.txt"],
     ["latin1.txt", "utf-8", "line 1", "encoding"]),
    ("tokenizer file missing", P + ["--run", "{W}/new", "--set",
                                    "data.tokenizer.path={W}/nope.json"],
     ["nope.json", "data.tokenizer.path"]),
    ("tokenizer file garbage", P + ["--run", "{W}/new", "--set",
                                    "data.tokenizer.path={W}/badtok.json"],
     ["badtok.json", "could not be read"]),
    ("vocab smaller than tokenizer", P + ["--run", "{W}/new", "--set", "model.vocab_size=5"],
     ["model.vocab_size=5"]),
    ("masked task on causal model", P + ["--run", "{W}/new", "--set",
                                              "train.task=masked"],
     ["train.task", "bidirectional"]),
    # finetune
    ("finetune on unlabeled data", F + ["--run", "{W}/new", "--set",
                                        "data.train=text:{W}/corpus.txt"], ["has no labels"]),
    ("init_from missing", F + ["--run", "{W}/new", "--init-from", "{W}/nope"],
     ["finetune.init_from", "nope"]),
    ("init_from not a run", F + ["--run", "{W}/new", "--init-from", "{W}/notrun"],
     ["notrun", "neither"]),
    ("finetune into a run of another config", F + ["--run", "{W}/clf", "--set",
                                                   "model.d_model=64"],
     ["different config", "model", "--overwrite"]),
    # evaluate
    ("evaluate a missing run", ["evaluate", "--run", "{W}/nope"], ["nope", "not a jaxlm run"]),
    ("evaluate a torn run", ["evaluate", "--run", "{W}/lm_badcfg"], ["config.yaml", "damaged"]),
    ("checkpoint not a step", ["evaluate", "--run", "{W}/clf", "--checkpoint", "abc"],
     ["'abc'", "best, latest or a step"]),
    ("checkpoint step absent", ["evaluate", "--run", "{W}/clf", "--checkpoint", "999"],
     ["step 999", "it has steps 4"]),
    ("batch size 0", ["evaluate", "--run", "{W}/clf", "--batch-size", "0"],
     ["--batch-size", "positive integer"]),
    ("report over the run's config", ["evaluate", "--run", "{W}/clf", "--out",
                                      "{W}/clf/config.yaml"], ["config.yaml", "would overwrite"]),
    ("evaluation data missing", ["evaluate", "--run", "{W}/clf", "--data", "labeled:{W}/nope"],
     ["nope", "does not exist"]),
    # predict
    ("predict with a language model", ["predict", "--run", "{W}/lm", "--input", "{W}/corpus.txt"],
     ["lm", "not a classifier"]),
    ("predict input not utf-8", ["predict", "--run", "{W}/clf", "--input", "{W}/latin1.txt"],
     ["latin1.txt", "utf-8", "--encoding"]),
    ("predictions over model.json", ["predict", "--run", "{W}/clf", "--input", "{W}/corpus.txt",
                                     "--out", "{W}/clf/model.json"],
     ["model.json", "would overwrite"]),
    # generate
    ("generate with a classifier", ["generate", "--run", "{W}/clf", "--prompt", "hi"],
     ["classification", "causal language model"]),
    ("negative temperature", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--temperature",
                              "-1"], ["temperature", ">= 0"]),
    ("top-p 0", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--top-p", "0"], ["top_p"]),
    ("generate from an absent step", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--checkpoint",
                                      "999"], ["step 999"]),
    ("generations into checkpoints/", ["generate", "--run", "{W}/lm", "--prompt", "hi",
                                       "--out", "{W}/lm/checkpoints/out.jsonl"],
     ["checkpoints", "would overwrite"]),
    # convert (Hugging Face folders in)
    ("HF folder missing", ["convert", "--from-hf", "{W}/nope", "--out", "{W}/new"],
     ["nope", "does not exist"]),
    ("run dir given as HF folder", ["convert", "--from-hf", "{W}/lm", "--out", "{W}/new"],
     ["no config.json"]),
    ("HF config with auto_map", ["convert", "--from-hf", "{W}/hf_automap", "--out", "{W}/new"],
     ["hf_automap/config.json", "auto_map", "never runs"]),
    ("HF pickle with code", ["convert", "--from-hf", "{W}/hf_pickle", "--out", "{W}/new"],
     ["pytorch_model.bin", "could not be read safely"]),
    ("convert over an existing run", ["convert", "--from-hf", "{W}/hf_lm", "--out", "{W}/clf"],
     ["clf", "not empty", "--overwrite"]),
    # export (Hugging Face folders out)
    ("export into a run dir", ["export", "--run", "{W}/lm", "--out", "{W}/clf", "--overwrite"],
     ["clf", "jaxlm run directory"]),
    ("export onto a file", ["export", "--run", "{W}/lm", "--out", "{W}/corpus.txt"],
     ["corpus.txt", "existing file"]),
    # data show
    ("unknown dataset kind", ["data", "show", "foo:bar"], ["foo", "Unknown dataset kind"]),
    ("dataset file missing", ["data", "show", "text:{W}/nope.txt"], ["nope.txt", "does not exist"]),
    ("tsv without a text field", ["data", "show", "tsv:{W}/corpus.txt"], ["text_field"]),
    ("undeclared label", ["data", "show", "labeled:{W}/sst", "--labels", "0,7", "--on-invalid",
                          "error"], ["label '1'", "data.labels"]),
    ("TFDS features naming foreign code", ["data", "show", "tfds:evil_ds", "--tfds-data-dir",
                                           "{W}/tfds"], ["features.json", "evil_module.Text"]),
    # train-tokenizer
    ("tokenizer into a run dir", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind",
                                  "char", "--out", "{W}/lm"], ["lm", "jaxlm run directory"]),
    ("tokenizer out is a file", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind",
                                 "char", "--out", "{W}/corpus.txt"], ["corpus.txt", "existing file"]),
    ("bpe without vocab size", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind", "bpe",
                                "--out", "{W}/tok", "--quiet"], ["bpe", "vocabulary size"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, w):
    name, argv, expected = case
    fresh = f"{w}/new_{CASES.index(case)}"  # a new run dir per case
    argv = [a.replace("{W}/new", fresh).replace("{W}", str(w)) for a in argv]
    before = {d: _tree_hash(w / d) for d in EXISTING}
    code, err = _run(argv)
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.find("error:"):]
    for s in expected:
        assert s.replace("{W}", str(w)) in message, message
    assert {d: _tree_hash(w / d) for d in EXISTING} == before  # nothing existing was touched
    assert not (w / "PWNED").exists()  # no code from a config, checkpoint or data folder ran


def test_catalogue_is_large():
    assert len(CASES) >= 25
    commands = {c[1][0] for c in CASES}
    assert commands >= {"pretrain", "finetune", "evaluate", "predict", "generate", "convert",
                        "export", "data", "train-tokenizer"}


def test_a_failed_start_is_rerun_with_the_fixed_config(w, capsys):
    """Bad input fails before the run directory's first write, so fixing the config and
    rerunning into the same folder works (no --overwrite needed). (A start that failed later,
    before training a step: tests/test_reliability_rundir.py.)"""
    run = str(w / "failed_start")
    argv = ["pretrain", "--config", str(w / "tiny.yaml"), "--quiet", "--run", run]
    assert _run(argv + ["--set", f"data.tokenizer.path={w}/nope.json",
                        "--set", "model.vocab_size=0", "--set", "train.steps=2"])[0] == 2
    assert not (w / "failed_start").exists()
    code, err = _run(argv + ["--set", "train.steps=2", "--set", "train.checkpoint_every=2"])
    assert code == 0, err
    # now it has a checkpoint: a different config is refused again
    assert "different config" in _run(argv + ["--set", "model.d_model=64"])[1]


def test_overwrite_discards_everything_the_old_run_wrote(tmp_path):
    from jaxlm.config import Config
    from jaxlm.run import Run

    run = tmp_path / "run"
    Run(run).prepare(Config())
    for d in ("checkpoints/4", "best/4", "checkpoints.corrupt/8", "tensorboard"):
        (run / d).mkdir(parents=True)
    for f in ("model.json", "tokenizer.json", "metrics.jsonl", "summary.json", "eval_test.json",
              "best/best.json", "notes.txt"):
        (run / f).write_text("old")
    cfg = Config()
    cfg.model.d_model = 64
    Run(run).prepare(cfg, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]  # not theirs


def test_reading_commands_leave_runs_unchanged(w, tmp_path):
    """Successful evaluate (report elsewhere), predict, generate, export and convert read runs
    (and HF folders) without writing a byte into them."""
    before = {d: _tree_hash(w / d) for d in EXISTING}
    for argv in (["evaluate", "--run", f"{w}/clf", "--out", f"{tmp_path}/eval.json"],
                 ["predict", "--run", f"{w}/clf", "--input", f"{w}/sst/dev.txt",
                  "--out", f"{tmp_path}/pred.jsonl"],
                 ["generate", "--run", f"{w}/lm", "--prompt", "ROMEO:", "--max-new-tokens", "8",
                  "--out", f"{tmp_path}/gen.jsonl"],
                 ["export", "--run", f"{w}/lm", "--out", f"{tmp_path}/hf"],
                 ["convert", "--from-hf", f"{w}/hf_lm", "--out", f"{tmp_path}/conv"]):
        code, err = _run(argv)
        assert code == 0, (argv, err)
    assert {d: _tree_hash(w / d) for d in EXISTING} == before
