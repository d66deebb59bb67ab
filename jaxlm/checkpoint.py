"""Orbax checkpoints of the train state plus the data iterator position, verified on restore.

Saves are asynchronous and atomic: orbax writes into `STEP.orbax-checkpoint-tmp` and renames it to
`STEP` when complete, so a crash mid-save leaves the previous checkpoint intact and a leftover tmp
folder. Restoring takes an abstract target whose leaves carry the *current* mesh's shardings, so a
checkpoint saved on 8 devices restores on 1 and back.

Orbax does not notice damaged files: a flipped byte in an array file restores silently as wrong
numbers. So every step folder is *sealed* just before orbax renames it into place: a manifest
(`jaxlm_manifest.json`) lists each file's size and CRC-32. Restoring checks the manifest; a step
that fails (missing, truncated or altered files), and any leftover tmp folder, is reported, moved
aside into `DIR.corrupt/` (never deleted) and skipped in favour of the previous good step.
Read-only users (evaluate, export, ...) skip such steps without moving anything.

Checkpoints live outside the training package because inference reads them too (`read_params`).
"""
from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxlm.atomic import write_text_atomic
from jaxlm.errors import CheckpointError

MANIFEST = "jaxlm_manifest.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
# Written by orbax *after* the seal, while committing: not covered by the manifest.
_UNSEALED_ROOT_FILES = {MANIFEST, "_CHECKPOINT_METADATA", "commit_success.txt"}


def warn(message: str) -> None:
    """One warning line on stderr (primary host only)."""
    if jax.process_index() == 0:
        sys.stderr.write(f"jaxlm: warning: {message}\n")
        sys.stderr.flush()


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _sealed_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file()
                  and not (p.parent == step_dir and p.name in _UNSEALED_ROOT_FILES))


def seal(step_dir: str | Path) -> None:
    """Write the manifest (size and CRC-32 of every file) into a finished step folder."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): [p.stat().st_size, _crc32(p)]
             for p in _sealed_files(step_dir)}
    write_text_atomic(step_dir / MANIFEST, json.dumps({"version": 1, "files": files}, indent=0))


def check_step_dir(step_dir: str | Path) -> tuple[bool | None, str]:
    """(True, "") when the folder matches its manifest, (None, why) when it has none (older jaxlm
    versions, or a process killed between orbax's commit and the seal), (False, why) when damaged."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return False, "the folder is missing"
    man = step_dir / MANIFEST
    if not man.is_file():
        return None, f"no {MANIFEST}"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False, f"{MANIFEST} is unreadable"
    for rel, (size, crc) in files.items():
        p = step_dir / rel
        if not p.is_file():
            return False, f"{rel} is missing"
        if p.stat().st_size != size:
            return False, f"{rel} has {p.stat().st_size} bytes instead of {size}"
        if _crc32(p) != crc:
            return False, f"{rel} does not match its checksum"
    extra = {p.relative_to(step_dir).as_posix() for p in _sealed_files(step_dir)} - set(files)
    if extra:
        return False, f"unexpected file {sorted(extra)[0]}"
    return True, ""


def latest_intact(folder: str | Path, steps: list[int], what: str = "checkpoint") -> int | None:
    """The newest of `steps` whose folder is not damaged (warning about the ones skipped); for
    read-only users, which must not move anything."""
    for step in sorted(steps, reverse=True):
        ok, why = check_step_dir(Path(folder) / str(step))
        if ok is not False:
            return step
        warn(f"the {what} at step {step} in '{folder}' is damaged ({why}); skipping it and using "
             "the previous one.")
    return None


def require_intact(folder: str | Path, step: int) -> None:
    """Raise a CheckpointError naming the step when its folder is damaged."""
    ok, why = check_step_dir(Path(folder) / str(step))
    if ok is False:
        raise CheckpointError(
            f"The checkpoint at step {step} in '{folder}' is damaged ({why}), so it was not "
            "loaded. Choose another step (or 'latest', which skips damaged ones), or restore the "
            "folder from a backup.", culprit=str(Path(folder) / str(step)))


def read_params(item_dir: str | Path, key: str | None = "params"
                ) -> dict[tuple[str | int, ...], np.ndarray]:
    """{param path: numpy array} of one orbax item folder (`STEP/state`, or `best/STEP/params`
    with key=None): orbax's own metadata gives the tree, and only the `key` subtree is restored,
    onto the host, so the optimizer state and the mesh the run was saved on do not matter."""
    path = Path(item_dir).absolute()
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(path)  # the item's tree, no step files
        tree = meta if key is None else {key: meta[key]}
        target = jax.tree.map(lambda m: np.zeros((), np.float32), tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        out = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=key is not None))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise CheckpointError(f"The checkpoint '{path}' could not be read as jaxlm parameters "
                              f"({type(e).__name__}: {str(e)[:300]}).", culprit=str(path)) from None
    flat = {}
    for keys, arr in jax.tree_util.tree_flatten_with_path(out if key is None else out[key])[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in keys]
        if names and names[-1] == "value":  # nnx Variables are stored as {"value": array}
            names = names[:-1]
        flat[tuple(int(n) if n.isdigit() else n for n in names)] = np.asarray(arr)
    return flat


def read_frozen_base(base_dir: Path) -> dict[tuple[str | int, ...], np.ndarray]:
    """{param path: numpy array} of a LoRA run's frozen base (RUN_DIR/base, written once by
    `jaxlm.train.frozen`), checked against its manifest."""
    ok, why = check_step_dir(base_dir)
    if ok is not True:
        raise CheckpointError(f"The frozen base parameters of a LoRA run, '{base_dir}', are "
                              f"damaged or missing ({why}). Restore the folder from a backup.",
                              culprit=str(base_dir))
    return read_params(Path(base_dir) / "params", key=None)


def set_aside(path: Path) -> Path:
    """Move a damaged or unfinished checkpoint folder into `DIR.corrupt/` (never delete it)."""
    dest_dir = path.parent.with_name(path.parent.name + ".corrupt")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest, n = dest_dir / path.name, 1
    while dest.exists():
        dest, n = dest_dir / f"{path.name}.{n}", n + 1
    shutil.move(str(path), str(dest))
    return dest


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
    leaves, treedef = jax.tree.flatten(abstract_state)
    shard_leaves = jax.tree.leaves(shardings)
    if len(leaves) != len(shard_leaves):
        raise ValueError("state and sharding trees do not match")
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                                        for a, s in zip(leaves, shard_leaves)])


def _primary_decides(value: int) -> int:
    """Process 0's value on every host (file checks happen once, on the primary host)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items jaxlm saves, sealed saves and
    verified restores. `read_only`: never create, move or delete anything."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.async_save, self.read_only = async_save, read_only
        self._pending: int | None = None
        if not read_only:
            self._set_aside_leftovers()
        # Always orbax's async checkpointer (its hook seals the folder before the rename); a
        # synchronous save is an async one followed by a wait.
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, read_only=read_only,
                enable_async_checkpointing=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_pending)),
            item_names=("state", "data"))

    def _set_aside_leftovers(self) -> None:
        """Unfinished saves of a killed process: report and move aside."""
        if jax.process_index() == 0 and self.directory.is_dir():
            for p in sorted(self.directory.iterdir()):
                if TMP_MARKER in p.name:
                    dest = set_aside(p)
                    warn(f"'{p.name}' in '{self.directory}' is an unfinished checkpoint (the "
                         f"process stopped while saving); moved it to '{dest}'.")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxlm_checkpoint_leftovers")

    def _seal_pending(self) -> None:
        """Runs on the primary host after orbax wrote every file and before it renames the tmp
        folder into place, so a step folder never exists without its manifest."""
        step = self._pending
        if step is None:
            return
        tmp = sorted(self.directory.glob(f"{step}{TMP_MARKER}*"))
        seal(tmp[0] if tmp else self.directory / str(step))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> bool:
        """Save (asynchronously unless async_save=False); a step already saved is skipped."""
        if self.read_only:
            raise CheckpointError(f"'{self.directory}' was opened read-only.",
                                  culprit=str(self.directory))
        if step in self.manager.all_steps():
            return False
        self.manager.wait_until_finished()  # one save in flight: `_pending` names it
        self._pending = step
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {})), force=True)
        if not self.async_save:
            self.manager.wait_until_finished()
        return saved

    def _check(self, step: int) -> tuple[bool | None, str]:
        ok, why = (check_step_dir(self.directory / str(step)) if jax.process_index() == 0
                   else (None, ""))
        code = _primary_decides({True: 1, None: 0, False: -1}[ok])
        return {1: True, 0: None, -1: False}[code], why

    def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
        if isinstance(target, dict) and "nonfinite" in target and not self._has(step, "nonfinite"):
            # Saved before the non-finite counters existed: restore the rest, counters start at 0.
            state, data = self._restore(step, {k: v for k, v in target.items() if k != "nonfinite"})
            state["nonfinite"] = jax.tree.map(
                lambda t, v: jax.make_array_from_callback((), t.sharding,
                                                          lambda _: np.asarray(v, t.dtype)),
                target["nonfinite"], {"count": 0, "last_step": -1})
            return state, data
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"The checkpoint at step {step} in '{self.directory}' does not match this "
                f"model/optimizer ({type(e).__name__}: {str(e)[:400]}). Use the config it was "
                "trained with (run_dir/config.yaml), or start a new run directory.",
                culprit=str(self.directory)) from None
        return out["state"], dict(out["data"] or {})

    def _has(self, step: int, key: str) -> bool:
        """Whether the saved state has a top-level `key` (orbax metadata only, no arrays)."""
        try:
            meta = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state")
            return key in meta
        except Exception:  # noqa: BLE001 - unreadable metadata: let the restore report it
            return True

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """Restore (state, data_state) at `step` (latest intact one when None) onto `target`'s
        shardings."""
        if step is None:
            found = self.restore_latest(target)
            if found is None:
                raise CheckpointError(f"No checkpoint found in '{self.directory}'. Train first, "
                                      "or point at a run directory that has checkpoints/.",
                                      culprit=str(self.directory))
            return found[0], found[1]
        if self._check(step)[0] is False:
            require_intact(self.directory, step)
        return self._restore(step, target)

    def restore_latest(self, target: Any) -> tuple[Any, dict, int] | None:
        """(state, data_state, step) of the newest intact checkpoint, or None when there is none.

        Damaged steps are reported and (unless read-only) moved aside; a step without a manifest
        that orbax cannot read is reported and skipped. A sealed, intact step that does not fit
        `target` is a config mismatch, not damage: that raises.
        """
        skipped: list[str] = []
        for step in sorted(self.all_steps(), reverse=True):
            ok, why = self._check(step)
            if ok is False:
                skipped.append(f"step {step} ({why})")
                where = ""
                if not self.read_only and jax.process_index() == 0:
                    where = f"; moved it to '{set_aside(self.directory / str(step))}'"
                warn(f"the checkpoint at step {step} in '{self.directory}' is damaged ({why})"
                     f"{where}. Falling back to the previous checkpoint.")
                continue
            try:
                state, data = self._restore(step, target)
            except Exception as e:  # noqa: BLE001 - unsealed: orbax's error is all we have
                if ok:
                    raise
                skipped.append(f"step {step} (unreadable)")
                warn(f"the checkpoint at step {step} in '{self.directory}' has no manifest and "
                     f"could not be read ({type(e).__name__}: {str(e)[:200]}). Falling back to "
                     "the previous checkpoint.")
                continue
            if skipped:
                self.manager.reload()
            return state, data, step
        if skipped:
            self.manager.reload()
            raise CheckpointError(
                f"No intact checkpoint in '{self.directory}': {', '.join(skipped)}. "
                + ("Damaged ones were moved to '" + str(self.directory) + ".corrupt'; rerun the "
                   "same command to start again from step 0, or restore them from a backup."
                   if not self.read_only else "Restore them from a backup."),
                culprit=str(self.directory))
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
