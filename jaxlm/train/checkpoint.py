"""Orbax checkpoints of the train state plus the data iterator position.

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames it when
complete), so a crash mid-save leaves the previous checkpoint intact. Restoring takes an abstract
target whose leaves carry the *current* mesh's shardings, so a checkpoint saved on 8 devices
restores on 1 and back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.errors import CheckpointError


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
    leaves, treedef = jax.tree.flatten(abstract_state)
    shard_leaves = jax.tree.leaves(shardings)
    if len(leaves) != len(shard_leaves):
        raise ValueError("state and sharding trees do not match")
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                                        for a, s in zip(leaves, shard_leaves)])


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items jaxlm saves."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> bool:
        """Save asynchronously; a step that is already saved is skipped (orbax would no-op)."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {})), force=True)

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """Restore (state, data_state) at `step` (latest when None) onto `target`'s shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint found in '{self.directory}'. Train first, or "
                                  "point at a run directory that has checkpoints/.",
                                  culprit=str(self.directory))
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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
