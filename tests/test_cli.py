"""The command line: a short real run, and bad input that gets a clear one-paragraph error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def jaxlm(*args, cwd=REPO, env_extra=None):
    import os
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def small_run_args(corpus, run_dir, *extra):
    return ["pretrain", "--config", str(REPO / "configs/shakespeare_char.yaml"), "--run",
            str(run_dir), "--quiet", "--set", f"data.train=text:{corpus}",
            "--set", "train.steps=6", "--set", "train.eval_every=3", "--set", "train.log_every=2",
            "--set", "train.checkpoint_every=3", "--set", "train.eval_batches=2", *extra]


def test_cli_run_writes_metrics_tensorboard_and_checkpoint(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    out = jaxlm(*small_run_args(tiny_corpus, run))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("done: step 6, train loss")
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in val] == [3, 6]
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "mfu"} <= set(train[-1])
    assert train[-1]["loss"] < train[0]["loss"] + 0.5
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert (run / "tokenizer.json").is_file() and (run / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 6 and summary["val"]["loss"] > 0


def test_program_exit_keeps_what_the_interpreter_would_do(tmp_path):
    """`jaxlm` (cli.program) skips the interpreter's teardown, not what a finished command
    needs: idle thread-pool workers are stopped (orbax and others leave some), non-daemon
    threads are joined, atexit handlers run, output is flushed, and the command's exit code is
    the process's."""
    import os
    code = (
        "import atexit, sys, threading, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from jaxlm import cli\n"
        "pool = ThreadPoolExecutor(1)  # kept: its worker stays, idle and non-daemon\n"
        "pool.submit(lambda: None).result()\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        f"    open({str(tmp_path / 'thread.txt')!r}, 'w').write('joined')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('unflushed output')\n"
        "sys.argv = ['jaxlm', *sys.argv[1:]]\n"
        "cli.program()\n"
        "print('not reached')\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    ok = subprocess.run([sys.executable, "-c", code, "runs", str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("unflushed output") and "atexit ran" in ok.stdout
    assert "not reached" not in ok.stdout
    assert (tmp_path / "thread.txt").read_text() == "joined"
    bad = subprocess.run([sys.executable, "-c", code, "info", str(tmp_path / "missing")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "jaxlm info: error" in bad.stderr
    assert "atexit ran" in bad.stdout


def test_help_lists_commands():
    out = jaxlm("--help")
    assert out.returncode == 0 and "pretrain" in out.stdout


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BAD_INPUTS = [
    # (id, extra args or config file text, expected substrings)
    ("unknown key", ["--set", "train.step=5"], ["train.step", "Did you mean 'train.steps'"]),
    ("unknown section key", ["--set", "model.n_layers=2"], ["model.n_layers", "Valid keys"]),
    ("wrong type", ["--set", "train.batch_size=twelve"], ["train.batch_size", "must be of type int"]),
    ("bad choice", ["--set", "optim.name=adamm"], ["optim.name", "Did you mean 'adamw'"]),
    ("missing data file", ["--set", "data.train=text:/nonexistent/input.txt"],
     ["/nonexistent/input.txt", "does not exist"]),
    ("corpus shorter than a sequence", "SHORT", ["fewer than one sequence", "data.seq_len"]),
    ("mesh does not divide devices", ["--set", "mesh.data=3"], ["mesh", "1 available devices"]),
    ("batch does not divide mesh", "BATCH", ["train.batch_size", "data-parallel"]),
    ("bad override syntax", ["--set", "train.steps"], ["train.steps", "key=value"]),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(case, tiny_corpus, tmp_path):
    name, extra, expected = case
    env = None
    if extra == "SHORT":
        extra = ["--set", f"data.train=text:{_write(tmp_path, 'short.txt', 'To be or not.')}"]
    elif extra == "BATCH":
        extra = ["--set", "mesh.data=2", "--set", "train.batch_size=3"]
        env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    args = small_run_args(tiny_corpus, tmp_path / "run", *extra)
    out = jaxlm(*args, env_extra=env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    for s in expected:
        assert s in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3  # one paragraph, not a dump


def test_unknown_command_is_a_usage_error():
    out = jaxlm("pretrian")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_run_dir_of_a_different_config_is_refused(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    assert jaxlm(*small_run_args(tiny_corpus, run)).returncode == 0
    before = (run / "config.yaml").read_text()
    out = jaxlm(*small_run_args(tiny_corpus, run, "--set", "model.d_model=64"))
    assert out.returncode == 2 and "different config" in out.stderr and "--overwrite" in out.stderr
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("argv,dest,value,old", [
    (["pretrain", "--config", "c.yaml", "--run", "R"], "run_dir", "R", None),
    (["pretrain", "--config", "c.yaml", "--run-dir", "R"], "run_dir", "R", "--run-dir"),
    (["finetune", "--config", "c.yaml", "--run-dir", "R"], "run_dir", "R", "--run-dir"),
    (["generate", "--run", "R", "--prompt", "p", "--out", "o"], "output", "o", None),
    (["generate", "--run", "R", "--prompt", "p", "--output", "o"], "output", "o", "--output"),
    (["generate", "--run", "R", "--prompt", "p", "--checkpoint", "5"], "checkpoint", 5, None),
    (["generate", "--run", "R", "--prompt", "p", "--step", "5"], "checkpoint", 5, "--step"),
    (["generate", "--run", "R", "--prompt", "p"], "checkpoint", "latest", None),
    (["predict", "--run", "R", "--out", "o"], "output", "o", None),
    (["predict", "--run", "R", "--output", "o"], "output", "o", "--output"),
    (["predict", "--run", "R", "--checkpoint", "best"], "checkpoint", "best", None),
    (["evaluate", "--run", "R", "--checkpoint", "3"], "checkpoint", 3, None),
    (["export", "--run", "R", "--out", "H"], "to_hf", "H", None),
    (["export", "--run", "R", "--to-hf", "H"], "to_hf", "H", "--to-hf"),
])
def test_one_flag_spelling_per_meaning_old_ones_still_work(argv, dest, value, old, capsys):
    from jaxlm import config
    from jaxlm.cli import build_parser
    config._noticed.clear()
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    if old is None:
        assert "deprecated" not in err
    else:
        assert err.strip().splitlines() == [f"jaxlm: '{old}' is deprecated; use "
                                            f"'{'--run' if old == '--run-dir' else '--checkpoint' if old == '--step' else '--out'}'."]


def test_help_shows_only_the_current_spellings():
    from jaxlm.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.choices and "export" in a.choices)
    text = "".join(sub.choices[c].format_help() for c in ("pretrain", "generate", "predict",
                                                          "export"))
    for old in ("--run-dir", "--output", "--step", "--to-hf"):
        assert old not in text
    assert "--run DIR" in sub.choices["pretrain"].format_help()
