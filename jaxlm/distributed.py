"""Multi-host start-up: one `jax.distributed.initialize` call, before any JAX computation.

Where the arguments come from, first match wins:

1. explicit settings: `distributed.coordinator` / `num_processes` / `process_id` in the config,
   else the environment variables JAXLM_COORDINATOR (host:port of process 0),
   JAXLM_NUM_PROCESSES and JAXLM_PROCESS_ID (SLURM or GPU clusters launched by hand, or two
   processes on one machine);
2. a cluster JAX detects by itself (Cloud TPU pod slices, SLURM or Open MPI with several tasks):
   `jax.distributed.initialize()` with no arguments;
3. nothing: a single process (one CPU, one GPU node, a single-host TPU VM such as Colab) needs no
   initialization at all.

`distributed.initialize: never` turns all of this off; `always` calls `initialize()` even when no
cluster is detected (JAX then reports what is missing).
"""
from __future__ import annotations

import os
from typing import Any

import jax

from jaxlm.errors import ConfigError

ENV_COORDINATOR = "JAXLM_COORDINATOR"
ENV_NUM_PROCESSES = "JAXLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLM_PROCESS_ID"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"Environment variable {name}={text!r} is not an integer. Set it to the "
                          "number of processes / this process's index (0-based), or unset it.",
                          culprit=name) from None


def explicit_settings(cfg: Any | None) -> dict[str, Any] | None:
    """(coordinator, num_processes, process_id) from the config, else the environment; None when
    neither names a coordinator. Raises a ConfigError when the settings are incomplete."""
    coordinator = (getattr(cfg, "coordinator", "") or os.environ.get(ENV_COORDINATOR, "")).strip()
    num = getattr(cfg, "num_processes", 0) or _env_int(ENV_NUM_PROCESSES) or 0
    pid = getattr(cfg, "process_id", -1)
    if pid is None or pid < 0:
        env_pid = _env_int(ENV_PROCESS_ID)
        pid = -1 if env_pid is None else env_pid
    if not coordinator:
        if num or pid >= 0:
            raise ConfigError(
                "A process count or process id is set (distributed.num_processes/process_id or "
                f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}) but no coordinator address. Set "
                f"distributed.coordinator (or {ENV_COORDINATOR}) to host:port of process 0.",
                culprit="distributed.coordinator")
        return None
    if ":" not in coordinator:
        raise ConfigError(f"distributed.coordinator {coordinator!r} has no port. Write it as "
                          "host:port, e.g. 10.0.0.1:1234 (any free port on process 0's host).",
                          culprit="distributed.coordinator")
    if num < 1 or not 0 <= pid < num:
        raise ConfigError(
            f"Coordinator {coordinator} is set, but the process count ({num or 'unset'}) and this "
            f"process's id ({pid if pid >= 0 else 'unset'}) are not both valid: need "
            f"num_processes >= 1 and 0 <= process_id < num_processes. Set "
            f"distributed.num_processes/process_id or {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID} "
            "(e.g. from SLURM_NTASKS/SLURM_PROCID).", culprit="distributed.process_id")
    return {"coordinator_address": coordinator, "num_processes": num, "process_id": pid}


def cluster_detected() -> bool:
    """Whether this looks like a multi-process job JAX can set up by itself: SLURM or Open MPI
    with several tasks, or a Cloud TPU VM (pod slice; a single-host TPU VM initializes as one
    process). Kubernetes and mpi4py jobs opt in with `distributed.initialize: always`."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    try:  # Cloud TPU pod slices (GCE or GKE): JAX's own detectors (private API, so guarded)
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            if "Tpu" in env.__name__ and env.is_env_present():
                return True
    except Exception:  # noqa: BLE001 - detection is best-effort
        return False
    return False


def initialize(cfg: Any | None = None) -> bool:
    """Start JAX's distributed runtime when this is a multi-process job; returns whether it runs.

    `cfg` is the config's `distributed` section (or None: environment only). Call it before
    anything touches a JAX device (the CLI's training commands do it first thing).
    """
    mode = getattr(cfg, "initialize", "auto")
    if mode == "never":
        return False
    if jax.distributed.is_initialized():
        return True
    settings = explicit_settings(cfg)
    if settings is None and mode == "auto" and not cluster_detected():
        return False
    try:
        jax.distributed.initialize(**(settings or {}))
    except RuntimeError as e:
        if "before" in str(e) or "already" in str(e):
            raise ConfigError(
                "jax.distributed.initialize must run before any JAX computation, and something "
                f"already used a device ({str(e).splitlines()[0]}). Call "
                "jaxlm.distributed.initialize() first in your program.",
                culprit="distributed") from None
        raise
    except ValueError as e:
        raise ConfigError(
            f"Could not start the multi-host runtime: {str(e).splitlines()[0]}. Set "
            f"distributed.coordinator/num_processes/process_id (or {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or distributed.initialize: never for a "
            "single process.", culprit="distributed") from None
    return True
