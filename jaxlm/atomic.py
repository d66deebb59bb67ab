"""Atomic file writes: a temporary file of our own in the same folder, then a rename.

A process killed mid-write leaves the old file (or none), never a torn one; several hosts writing
the same file in a shared run directory each rename a complete copy.

A write that fails (a read-only folder, a full disk, a path below a regular file) becomes one
paragraph naming the path, the cause and the fix (`writing`, `output_error`), never a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from jaxlm.errors import OutputError

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the result onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; run files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_output(path: str | Path, text: str) -> None:
    """A command's --out file: atomically, unless `path` is a device or a pipe (/dev/stdout)
    that a rename would replace."""
    p = Path(path)
    if p.exists() and not p.is_file():
        with p.open("w", encoding="utf-8") as f:
            f.write(text)
    else:
        write_atomic(p, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def check_writable(path: str | Path, what: str) -> None:
    """Refuse, before anything is computed, a file path whose folder is missing or where nothing
    can be created (read-only, not ours, a pseudo-filesystem): a probe file is created there and
    removed. A device or pipe (/dev/stdout) that exists is written in place, so it passes."""
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        return
    if not p.parent.is_dir():
        raise OutputError(f"Could not write {what} to '{path}': its folder '{p.parent}' does not "
                          "exist. Create it first, or choose a path in an existing folder.",
                          culprit=str(path))
    try:
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=p.name + ".", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(e, path, what, "Nothing was computed.") from None


def file_above(path: str | Path) -> Path | None:
    """The nearest existing ancestor of `path` that is not a folder (so nothing can be created
    below it), or None."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_error(e: OSError, path: str | Path | None, what: str | None,
                 done: str = "") -> OutputError:
    """One paragraph for a failed write of `what` to `path` (None: a file access the command did
    not foresee, read or write): which path, why, and what to do; `done` says what was already
    printed or kept (e.g. "The report above was not saved.")."""
    where = e.filename if e.filename is not None and not _tmp_of(e.filename, path) else path
    below = file_above(where) if where is not None else None
    if below is not None or e.errno in (errno.ENOTDIR, errno.EEXIST):
        why = (f"'{below}' is a file, so nothing can be written below it" if below is not None
               else "a part of that path is a file, not a folder")
        fix = "Choose a path in a folder."
    elif e.errno in _READ_ONLY:
        why = f"the folder or file is read-only or not yours ({e.strerror})"
        fix = "Make it writable, or choose another path."
    elif e.errno in _FULL:
        why = f"the disk is full ({e.strerror})"
        fix = "Free some space, or choose a path on another disk."
    else:
        why = e.strerror or str(e)
        fix = "Check the path, or choose another one."
    done = f" {done}" if done else ""
    if what is None:
        head = f"'{where}' could not be read or written" if where else "A file access failed"
    else:
        head = f"Could not write {what}" + (f" to '{where}'" if where else "")
    return OutputError(f"{head}: {why}.{done} {fix}", culprit=str(where))


def _tmp_of(filename: str | Path, path: str | Path | None) -> bool:
    """Whether `filename` is `write_atomic`'s temporary file for `path` (name the path then)."""
    if path is None:
        return False
    f, p = Path(filename), Path(path)
    return f.parent == p.parent and f.name.startswith(p.name + ".") and f.suffix == ".tmp"


@contextlib.contextmanager
def writing(path: str | Path, what: str, done: str = "") -> Iterator[None]:
    """Turn an OSError about `path` (or below it) raised inside the block into
    `output_error(...)` (exit 2 from the CLI); others (e.g. reading an input) pass through."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and not _is_within(e.filename, path):
            raise
        raise output_error(e, path, what, done) from None


def _is_within(filename: str | Path, path: str | Path) -> bool:
    f, p = Path(filename).absolute(), Path(path).absolute()
    return f == p or p in f.parents or _tmp_of(f, p) or f in p.parents
