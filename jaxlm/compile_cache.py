"""A persistent XLA compilation cache for the `jaxlm` command, so that rerunning a job (the same
model, shapes and mesh) loads its compiled steps from disk instead of compiling them again.

JAX keeps the cache (`jax_compilation_cache_dir`); jaxlm only chooses where and how big:
$JAXLM_COMPILATION_CACHE, else $XDG_CACHE_HOME/jaxlm/xla (~/.cache/jaxlm/xla), at most
`MAX_BYTES` (JAX evicts the least recently used entries). JAXLM_COMPILATION_CACHE=off turns it
off. A script or notebook opts in with `use_compilation_cache()` before its first compilation;
importing jaxlm changes nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "JAXLM_COMPILATION_CACHE"
MAX_BYTES = 2 << 30
MIN_COMPILE_S = 0.0  # cache every compilation: jaxlm's jobs compile a handful of functions


def cache_dir(environ: dict | None = None) -> Path | None:
    """Where the cache lives, or None when turned off."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxlm" / "xla"


def use_compilation_cache(path: str | Path | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default: `cache_dir()`); returns the
    folder, or None when turned off or not writable (compiling as usual is the fallback).

    Through JAX's environment variables when JAX is not imported yet (so `jaxlm --help` stays
    free of it), and a user's own JAX_COMPILATION_CACHE_DIR wins."""
    import sys
    folder = Path(path).expanduser() if path is not None else cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    settings = {"jax_compilation_cache_dir": str(folder),
                "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_S,
                "jax_compilation_cache_max_size": MAX_BYTES}
    if "jax" in sys.modules:
        import jax
        for key, value in settings.items():
            jax.config.update(key, value)
        return folder
    for key, value in settings.items():
        os.environ.setdefault(key.upper(), str(value))
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
