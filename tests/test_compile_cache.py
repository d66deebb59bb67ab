"""The `jaxlm` command keeps compiled steps in a persistent cache: a rerun of the same job
compiles nothing new; JAXLM_COMPILATION_CACHE picks the folder or turns it off."""
import os
import subprocess
import sys
from pathlib import Path

from jaxlm.compile_cache import cache_dir

REPO = Path(__file__).resolve().parents[1]


def test_cache_dir_follows_the_environment(tmp_path):
    assert cache_dir({"JAXLM_COMPILATION_CACHE": "off"}) is None
    assert cache_dir({"JAXLM_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxlm" / "xla"


def _pretrain(tmp_path, corpus, run: str, **env_vars: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", **env_vars)
    cmd = [sys.executable, "-m", "jaxlm.cli", "pretrain", "--quiet", "--run", str(tmp_path / run),
           "--config", str(REPO / "configs/shakespeare_char.yaml"), "--set", f"data.train=text:{corpus}", "--set", "data.seq_len=16",
           "--set", "data.tokenizer.kind=char", "--set", "model.num_layers=1",
           "--set", "model.d_model=32", "--set", "model.num_heads=2", "--set", "model.max_len=16",
           "--set", "train.steps=4", "--set", "train.batch_size=4",
           "--set", "train.eval_every=4", "--set", "train.checkpoint_every=4"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_rerun_compiles_nothing_new(tmp_path, tiny_corpus):
    cache = tmp_path / "xla"
    _pretrain(tmp_path, tiny_corpus, "a", JAXLM_COMPILATION_CACHE=str(cache))
    first = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit_") for name in first), first  # the steps were cached
    _pretrain(tmp_path, tiny_corpus, "b", JAXLM_COMPILATION_CACHE=str(cache))
    assert sorted(p.name for p in cache.iterdir()) == first  # every compilation was a hit


def test_off_writes_no_cache(tmp_path, tiny_corpus):
    _pretrain(tmp_path, tiny_corpus, "a", JAXLM_COMPILATION_CACHE="off",
              XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert (tmp_path / "a" / "summary.json").is_file()
    assert not (tmp_path / "cache" / "jaxlm" / "xla").exists()
    _pretrain(tmp_path, tiny_corpus, "b", XDG_CACHE_HOME=str(tmp_path / "cache"))  # the default
    assert any((tmp_path / "cache" / "jaxlm" / "xla").iterdir())
