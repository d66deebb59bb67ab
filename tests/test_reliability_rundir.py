"""Run directories and outputs: nothing is deleted or changed without --overwrite, a run lands where
its name says, a write that fails is one clear paragraph after what was computed is printed, and
a run stopped by NaN resumes from its last good checkpoint with a lower learning rate.

- Foreign folders (another program's config.yaml, tokenizer.json, metrics.jsonl, tensorboard/,
  checkpoints/model_epoch9.pt, notes.txt) survive every writing command byte for byte, whatever
  config.yaml they hold (another program's, a hand-written jaxlm one, a complete jaxlm config of
  another run, a torn one, none).
- A jaxlm run whose checkpoints were set aside in checkpoints.corrupt/ is refused, not cleared.
- Only a start that never trained (exactly the files train() writes before its first step) is
  restarted with a different config, with the new config's tokenizer.
- Write failures: a path below a regular file (every command), a read-only run directory
  (evaluate; made read-only with chmod, and with `chattr +i` when running as root, which chmod
  does not stop), a full disk (/dev/full).
"""
from __future__ import annotations

import copy
import io
import json
import os
import shlex
import shutil
import subprocess
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

import jaxlm.train.trainer as trainer_mod
from cli_utils import poison_step as _poison_step  # noqa: E402
from jaxlm.cli import main

LM = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
      "data": {"seq_len": 32}, "mesh": {"num_devices": 1},
      "train": {"steps": 4, "batch_size": 4, "eval_every": 0, "log_every": 1,
                "checkpoint_every": 4}}
MASKED = {**LM, "model": {**LM["model"], "family": "bert"},
          "train": {**LM["train"], "task": "masked"}}
CLF = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 64},
       "data": {"seq_len": 32, "tokenizer": {"kind": "wordpiece", "vocab_size": 200}},
       "mesh": {"num_devices": 1},
       "train": {"task": "classification", "steps": 2, "batch_size": 8, "eval_every": 2,
                 "log_every": 1, "checkpoint_every": 2}}
GEN = {**LM, "train": {**LM["train"], "task": "generative"},
       "generative": {"prompt_template": "{input}\n", "target_template": "{output}"}}


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (folders as None) with its bytes."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _message(err: str) -> str:
    assert "Traceback" not in err, err
    return err[err.find("error:"):]


@pytest.fixture(scope="module")
def w(tmp_path_factory, data_dir) -> Path:
    """Data for every task, one finished tiny LM run and its Hugging Face export. The run is the
    NaN case: it stops on a NaN batch at step 3 (exit 3) and is finished by the command the stop
    message prints (a lower learning rate); what both printed is kept in nan.json."""
    w = tmp_path_factory.mktemp("rundir")
    (w / "corpus.txt").write_text((data_dir / "tinyshakespeare/input.txt").read_text()[:20_000])
    (w / "sst").mkdir()
    for name, n in (("train.txt", 120), ("dev.txt", 30), ("test.txt", 30)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (w / "sst" / name).write_text("\n".join(lines) + "\n")
    (w / "gen").mkdir()
    words = [x for x in (w / "corpus.txt").read_text().split() if len(x) <= 8][:300]
    (w / "gen" / "train.jsonl").write_text("".join(
        json.dumps({"input": a, "output": a[::-1]}) + "\n" for a in words))
    configs = {"lm": _with(LM, "text", w / "corpus.txt"), "masked": _with(MASKED, "text", w / "corpus.txt"),
               "clf": _with(CLF, "labeled", w / "sst"), "gen": _with(GEN, "jsonl", w / "gen")}
    for name, cfg in configs.items():
        (w / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["pretrain", "--config", w / "lm.yaml", "--run", w / "lm", "--quiet", "--set",
            "train.steps=6", "--set", "train.checkpoint_every=1", "--set", "optim.lr=0.002"]
    with pytest.MonkeyPatch.context() as mp:
        _poison_step(mp, 3)
        stop = _cli(argv)
    command = stop[2].split("resume with: ", 1)[-1].splitlines()[0]
    resume = _cli(shlex.split(command)[1:])
    (w / "nan.json").write_text(json.dumps({"stop": stop, "command": command, "resume": resume}))
    assert _cli(["export", "--run", w / "lm", "--out", w / "hf"])[0] == 0
    return w


def _with(cfg: dict, kind: str, path: Path) -> dict:
    out = copy.deepcopy(cfg)
    out["data"]["train"] = f"{kind}:{path}"
    return out


# --- 1. foreign files survive every command --------------------------------------------------
def _foreign(root: Path, config: str | None) -> Path:
    """A folder of another program (a training run of its own), with `config` as config.yaml."""
    root.mkdir()
    if config is not None:
        (root / "config.yaml").write_text(config)
    (root / "tokenizer.json").write_text('{"model": {"type": "theirs"}, "vocab": ["a", "b"]}')
    (root / "metrics.jsonl").write_text('{"epoch": 9, "loss": 0.1}\n')
    (root / "tensorboard").mkdir()
    (root / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"\x00" * 64)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "model_epoch9.pt").write_bytes(os.urandom(256))
    (root / "notes.txt").write_text("results of the last experiment\n")
    return root


def _commands(w: Path, d: Path) -> dict[str, list]:
    """Every command that writes a run directory or an output folder, aimed at `d`."""
    train = {f"{verb} {name}": [verb, "--config", w / f"{name}.yaml", "--run", d, "--quiet"]
             for verb, name in (("pretrain", "lm"), ("pretrain", "masked"),
                                ("finetune", "clf"), ("finetune", "gen"))}
    return {**train,
            "convert": ["convert", "--from-hf", w / "hf", "--out", d],
            "export": ["export", "--run", w / "lm", "--out", d],
            "train-tokenizer": ["train-tokenizer", "--data", f"text:{w}/corpus.txt", "--kind",
                                "char", "--out", d, "--quiet"],
            "evaluate": ["evaluate", "--run", d],
            "plot": ["plot", d, "--out", d / "metrics.jsonl"]}


def test_no_command_removes_or_changes_foreign_files_without_overwrite(w):
    other_run = yaml.safe_load((w / "lm" / "config.yaml").read_text())
    other_run["model"]["d_model"] = 48  # a complete jaxlm config, of another run
    configs = {"another program's": "lr: 0.1\nepochs: 10\nmodel: resnet50\n",
               "hand-written jaxlm": (w / "lm.yaml").read_text(),
               "another jaxlm run's": yaml.safe_dump(other_run),
               "torn": "model: {d_model: [\n", "none": None}
    tried = 0
    for i, (kind, config) in enumerate(configs.items()):
        d = _foreign(w / f"foreign_{i}", config)
        before = _snapshot(d)
        for name, argv in _commands(w, d).items():
            code, _, err = _cli(argv)
            assert code == 2, (kind, name, err)
            assert str(d) in _message(err), (kind, name, err)
            assert _snapshot(d) == before, (kind, name)
            tried += 1
    assert tried == 45
    # the message names what is there and the two ways out
    d = w / "foreign_0"
    code, _, err = _cli(["pretrain", "--config", w / "lm.yaml", "--run", d, "--quiet"])
    msg = _message(err)
    for part in ("config.yaml (not a config jaxlm wrote)", "checkpoints/model_epoch9.pt",
                 "metrics.jsonl (1 logged record)", "tensorboard/events.out.tfevents.1.host",
                 "notes.txt", "Nothing in it was changed", "another --run", "--overwrite"):
        assert part in msg, msg


def test_train_tokenizer_keeps_an_existing_tokenizer_without_overwrite(w, tmp_path):
    (tmp_path / "tokenizer.json").write_text("mine")
    argv = ["train-tokenizer", "--data", f"text:{w}/corpus.txt", "--kind", "char",
            "--out", tmp_path, "--quiet"]
    code, _, err = _cli(argv)
    assert code == 2 and "--overwrite" in _message(err)
    assert (tmp_path / "tokenizer.json").read_text() == "mine"
    assert _cli(argv + ["--overwrite"])[0] == 0
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]


# --- 2. checkpoints.corrupt, a start that never trained -------------------------------------
def test_a_run_with_set_aside_checkpoints_is_refused_not_cleared(w, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(w / "lm", run)
    shutil.move(run / "checkpoints", run / "checkpoints.corrupt")  # every step set aside
    (run / "checkpoints").mkdir()
    before = _snapshot(run)
    code, _, err = _cli(["pretrain", "--config", w / "lm.yaml", "--run", run, "--quiet",
                         "--set", "model.d_model=64"])
    msg = _message(err)
    assert code == 2, err
    assert "checkpoints.corrupt/ (damaged checkpoints set aside)" in msg
    assert "summary.json" in msg and "metrics.jsonl (6 logged records)" in msg
    assert "(model differ)" in msg and "never saved" not in msg
    assert _snapshot(run) == before


def _start(w: Path, run: Path, monkeypatch, *overrides: str) -> None:
    """What train() leaves when its first step fails (the loop is made to raise): a config,
    tokenizer and model spec, an empty checkpoints/ and a TensorBoard file with no scalar."""
    from jaxlm.config import load_config
    from jaxlm.train.pretrain import pretrain

    def fail(self, *args, **kwargs):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fail)
    with pytest.raises(RuntimeError, match="the first step failed"):
        pretrain(load_config(w / "lm.yaml", list(overrides)), str(run), show_progress=False)


def test_only_a_start_that_never_trained_is_restarted_with_a_new_config(w, tmp_path,
                                                                          monkeypatch, capsys):
    start = tmp_path / "start"
    _start(w, start, monkeypatch)
    assert sorted(p.name for p in start.iterdir()) == [
        "checkpoints", "config.yaml", "model.json", "tensorboard", "tokenizer.json"]
    variants = {"notes": lambda d: (d / "notes.txt").write_text("mine"),
                "logged": lambda d: (d / "metrics.jsonl").write_text(
                    '{"step": 1, "split": "train", "loss": 3.0}\n'),
                "corrupt": lambda d: (d / "checkpoints.corrupt" / "1").mkdir(parents=True),
                "best": lambda d: (d / "best" / "2").mkdir(parents=True),
                "summary": lambda d: (d / "summary.json").write_text("{}")}
    new = ["--set", "data.tokenizer.kind=bpe", "--set", "data.tokenizer.vocab_size=300"]
    for name, add in variants.items():  # one thing more than a start: kept, refused
        d = tmp_path / name
        shutil.copytree(start, d)
        add(d)
        before = _snapshot(d)
        code, _, err = _cli(["pretrain", "--config", w / "lm.yaml", "--run", d, "--quiet", *new])
        assert code == 2 and "Nothing in it was changed" in _message(err), (name, err)
        assert _snapshot(d) == before, name
    from jaxlm.config import load_config
    from jaxlm.train.fit import prepare

    capsys.readouterr()  # the restart, up to the first step (no compile needed to see it)
    prepare(load_config(w / "lm.yaml", [x for x in new if x != "--set"]), str(start), False)
    err = capsys.readouterr().err
    assert "holds only the files of a start with a different config (data differ)" in err
    assert "never trained a step" in err
    assert yaml.safe_load((start / "config.yaml").read_text())["data"]["tokenizer"]["kind"] == "bpe"
    tok = json.loads((start / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE"  # the new config's tokenizer, not the old start's


def test_a_run_name_must_be_one_folder_name(w, tmp_path, monkeypatch):
    from jaxlm.config import Config
    from jaxlm.run import Run

    monkeypatch.chdir(tmp_path)
    for name in ("../../x", "a/b", "/tmp/x", "..", ".", "", "a\\b"):
        cfg = yaml.safe_load((w / "lm.yaml").read_text())
        cfg["name"] = name
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        code, _, err = _cli(["pretrain", "--config", "c.yaml", "--quiet"])
        msg = _message(err)
        assert code == 2 and "name" in msg and "--run PATH" in msg, (name, err)
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # nothing written anywhere
    assert not (tmp_path.parent.parent / "x").exists()
    assert Run.for_config(Config(name="ok")).path == Path("runs/ok")


# --- 3. writes that fail ---------------------------------------------------------------------
@contextmanager
def _read_only(folder: Path):
    """`folder` and everything in it unwritable: chmod, and `chattr +i` when the process is root
    (root ignores permission bits). Fails the test if neither stops a write."""
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    immutable = False
    try:
        if _writable(folder):
            immutable = subprocess.run(["chattr", "-R", "+i", str(folder)],
                                       capture_output=True).returncode == 0
        assert not _writable(folder), f"could not make {folder} read-only on this machine"
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_evaluate_on_a_read_only_run_prints_the_report_then_fails_clearly(w, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(w / "lm", run)
    with _read_only(run):
        before = _snapshot(run)
        code, out, err = _cli(["evaluate", "--run", run])
        assert _snapshot(run) == before
    msg = _message(err)
    assert code == 2, err
    assert "perplexity" in out  # the report was printed before the write failed
    assert f"{run}/eval_" in msg and "read-only" in msg and "was not saved" in msg
    assert len(msg.strip().splitlines()) == 1


def test_a_full_disk_is_a_clear_error_after_the_report_is_printed(w):
    code, out, err = _cli(["evaluate", "--run", w / "lm", "--out", "/dev/full"])
    assert code == 2 and "perplexity" in out
    assert "'/dev/full'" in _message(err) and "disk is full" in _message(err)


def test_an_output_below_a_regular_file_is_refused_before_any_work(w, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    below = f / "out"
    cases = {"pretrain": ["pretrain", "--config", w / "lm.yaml", "--run", below, "--quiet"],
             "finetune": ["finetune", "--config", w / "clf.yaml", "--run", below, "--quiet"],
             "evaluate": ["evaluate", "--run", w / "lm", "--out", below],
             "predict": ["predict", "--run", w / "lm", "--input", w / "corpus.txt", "--out", below],
             "generate": ["generate", "--run", w / "lm", "--prompt", "a", "--out", below],
             "export": ["export", "--run", w / "lm", "--out", below],
             "convert": ["convert", "--from-hf", w / "hf", "--out", below],
             "train-tokenizer": ["train-tokenizer", "--data", f"text:{w}/corpus.txt", "--kind",
                                 "char", "--out", below],
             "plot": ["plot", w / "lm", "--out", below],
             "data build": ["data", "build", "x_ds", "--train", w / "sst" / "dev.txt",
                            "--data-dir", below]}
    for name, argv in cases.items():
        code, out, err = _cli(argv)
        msg = _message(err)
        assert code == 2 and f"'{f}' is a file" in msg, (name, err)
    assert sorted(os.listdir(tmp_path)) == ["file.txt"] and f.read_text() == "x"


# --- 4. NaN -> a lower learning rate -> resume ------------------------------------------------
def test_a_nan_stop_resumes_from_its_last_good_checkpoint_with_a_lower_lr(w):
    """The fixture's run: stopped by NaN at step 3, then the printed command (the same one with
    --set optim.lr halved) resumed it from step 3 and trained finite to step 6."""
    from jaxlm.config import OptimConfig
    from jaxlm.run import Run
    from jaxlm.train.optim import learning_rate_schedule

    nan = json.loads((w / "nan.json").read_text())
    (code, _, err), command = nan["stop"], nan["command"]
    run = w / "lm"
    assert code == 3, err
    assert "at step 3" in err and "saved a checkpoint at step 3" in err
    assert "Resume from step 3 with a lower learning rate" in err
    assert command == shlex.join(["jaxlm", "pretrain", "--config", str(w / "lm.yaml"), "--run",
                                  str(run), "--quiet", "--set", "train.steps=6", "--set",
                                  "train.checkpoint_every=1", "--set", "optim.lr=0.001"])
    code, out, err = nan["resume"]
    assert code == 0, err
    assert "changed optimizer settings: optim.lr 0.002 -> 0.001" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == 3 and summary["step"] == 6
    assert summary["nonfinite_steps"] == 1  # the NaN step, before the stop; none after
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.001
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"time": history[0]["time"], "resumed_from": 3,
                        "changed": {"optim.lr": {"from": 0.002, "to": 0.001}}}]
    rows = {r["step"]: r for r in Run(run).metric_records() if r["split"] == "train"}
    assert sorted(rows) == [1, 2, 4, 5, 6]  # step 3's deferred log line died with the stop
    new_lr = learning_rate_schedule(OptimConfig(lr=0.001), 6)
    for step in (4, 5, 6):  # the resumed steps trained finite, on the new schedule
        assert np.isfinite(rows[step]["loss"])
        assert rows[step]["lr"] == pytest.approx(float(new_lr(step - 1)), rel=1e-6)
    params, _ = Run(run).read_params("latest")
    assert all(np.isfinite(v).all() for v in params.values())


def test_structural_optimizer_changes_are_still_refused(w, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(w / "lm", run)
    before = _snapshot(run)
    for change, named in (("optim.name=sgd", "(optim.name differ)"),
                          ("optim.grad_clip=0", "(optim.grad_clip differ)"),
                          ("model.d_model=64", "(model differ)")):
        code, _, err = _cli(["pretrain", "--config", w / "lm.yaml", "--run", run, "--quiet",
                             "--set", "train.steps=6", "--set", "train.checkpoint_every=1",
                             "--set", "optim.lr=0.001", "--set", change])
        assert code == 2 and named in _message(err), (change, err)
        assert ("resumes with other optimizer hyper-parameters" in err) == change.startswith(
            "optim"), err
        assert _snapshot(run) == before
    from jaxlm.run_start import optim_refusals  # an optim key not known to be safe: refused
    assert optim_refusals({"optim": {"name": "adamw", "new_key": 1}},
                          {"optim": {"name": "adamw", "new_key": 2}}) == ["optim.new_key"]


def test_adjustable_optimizer_settings_keep_the_saved_state_tree():
    """Every change `jaxlm.run_start` lets a run resume with leaves the optimizer state's tree
    (structure, shapes, dtypes) as saved, for every optimizer; each one it refuses changes it."""
    import dataclasses

    from jaxlm.config import OptimConfig, to_dict
    from jaxlm.run_start import ADJUSTABLE, adjustable_changes, on_off_changes
    from jaxlm.train.optim import build_optimizer

    params = {"backbone": {"embeddings": {"token": {"embedding": np.zeros((5, 4))}},
                           "w": np.zeros((4, 4)), "b": np.zeros(4)},
              "head": {"k": np.zeros((4, 2))}}
    values = {"lr": 1e-4, "min_lr": 1e-5, "schedule": "linear", "warmup_steps": 10,
              "decay_steps": 50, "b1": 0.5, "b2": 0.9, "eps": 1e-6, "weight_decay": 0.1,
              "decay_embeddings": True, "momentum": 0.0, "grad_clip": 0.0}
    assert {f"optim.{k}" for k in values} == set(ADJUSTABLE)

    def tree(cfg, **kw):
        tx, _ = build_optimizer(cfg, 100, **kw)
        state = jax.eval_shape(tx.init, params)
        return jax.tree.structure(state), [(x.shape, x.dtype) for x in jax.tree.leaves(state)]

    for name in ("adamw", "lion", "adafactor", "sgd"):
        for kw in ({}, {"backbone_lr_scale": 0.5}, {"freeze_backbone": True}):
            for base in (OptimConfig(name=name), OptimConfig(name=name, weight_decay=0.01)):
                for key, value in values.items():
                    new = dataclasses.replace(base, **{key: value})
                    old_d, new_d = {"optim": to_dict(base)}, {"optim": to_dict(new)}
                    if not adjustable_changes(old_d, new_d):
                        continue
                    same = tree(base, **kw) == tree(new, **kw)
                    assert same == (not on_off_changes(old_d, new_d)), (name, kw, key, value)
