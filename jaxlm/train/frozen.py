"""The frozen base of a parameter-efficient (LoRA) run, stored once in RUN_DIR/base.

Checkpoints of such a run hold the trained parameters (adapters, heads) and their optimizer state
only. The frozen rest, as it was at step 0 (the pretrained backbone), is written once when the
run starts: orbax into `base.partial/params`, sealed with a manifest (`jaxlm.checkpoint.seal`),
then renamed to `base`, so a process killed while writing leaves no `base` that looks complete.
Resuming restores it onto the current mesh and checks it against its manifest; `Run.load` reads
it beside the checkpoint.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.checkpoint import abstract_with_shardings, check_step_dir, seal
from jaxlm.errors import CheckpointError
from jaxlm.train.state import StateLayout, TrainState

ITEM = "params"


def save_frozen(run_path: Path, layout: StateLayout, state: TrainState) -> None:
    """Write the frozen part of `state.params` into RUN_DIR/base (replacing one left by a start
    that saved no checkpoint: the same values, from the same seed and checkpoint)."""
    base, partial = run_path / "base", run_path / "base.partial"
    primary = jax.process_index() == 0
    if primary:
        for p in (base, partial):
            if p.exists():
                shutil.rmtree(p)
    _sync("jaxlm_frozen_clear")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save((partial / ITEM).absolute(), layout.frozen_params(state.params))
    ckptr.wait_until_finished()
    ckptr.close()
    if primary:
        seal(partial)
        partial.rename(base)
    _sync("jaxlm_frozen_saved")


def restore_frozen(run_path: Path, layout: StateLayout, params_sharding: Any) -> Any:
    """The stored frozen parameters (plain layout) on `params_sharding`'s devices."""
    base = run_path / "base"
    ok, why = check_step_dir(base)
    if ok is not True:
        raise CheckpointError(
            f"The frozen base parameters of this LoRA run, '{base}', are damaged or missing "
            f"({why}), so its checkpoints (adapters and heads only) cannot be resumed. Restore "
            "the folder from a backup, or start the run again with --overwrite.",
            culprit=str(base))
    frozen_sharding = layout.frozen_params(params_sharding)
    target = abstract_with_shardings(layout.frozen, frozen_sharding)
    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.restore((base / ITEM).absolute(), target)
    ckptr.close()
    return layout.plain_frozen(tree)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
