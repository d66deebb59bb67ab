"""Mesh construction and logical-axis rules.

Model code names logical axes only ("embed", "mlp", "heads", "batch", ...). A rules table maps each
name to mesh axes ("data", "fsdp", "tensor"), so data, FSDP and tensor parallelism are a config
change. Parameter axes and activation axes have separate names ("embed" vs "act_embed") because FSDP
shards parameters along the embedding but activations along the batch.

A parameter says how it is split in one of two ways, both honoured by `state_shardings`:
- jaxlm's own metadata, `logical_axes=("embed", "mlp")` (what `jaxlm.models` writes);
- Flax's standard annotation, `nnx.with_partitioning(init, ("embed", "mlp"))` (metadata
  `out_sharding`, formerly `sharding` / `sharding_names`), with its optional `sharding_rules`.
Each name is looked up in the rules table first; a name the table does not know but that is a mesh
axis ("data", "fsdp", "tensor") names that axis directly; any other name is refused with a
ConfigError naming the parameter (add it to `mesh.rules`). None, or a name mapped to None,
replicates that dimension.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: dict[str, Any] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_mlp": "tensor",
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_vocab": "tensor",
    # parameters
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "classes": None,
    "norm": None,
}

_current: dict[str, Any] = {"mesh": None, "rules": DEFAULT_RULES}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None, num_devices: int = 0) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 for "the rest of the devices"."""
    devices = list(devices) if devices is not None else jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(f"mesh.num_devices={num_devices} but only {len(devices)} devices are "
                              "available. Lower it, or set 0 to use all devices.",
                              culprit="mesh.num_devices")
        devices = devices[:num_devices]
    n = len(devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"Only one of mesh.data/fsdp/tensor may be -1, got {sizes}. Set the "
                          "others to explicit sizes.", culprit="mesh")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n % fixed:
            raise ConfigError(
                f"The mesh {sizes} does not divide the {n} available devices: the fixed axes "
                f"multiply to {fixed}. Choose sizes whose product divides {n}.", culprit="mesh")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise ConfigError(
            f"The mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = "
            f"{math.prod(sizes.values())} devices does not match the {n} available devices. Make "
            f"the product {n}, or set one axis to -1 to take the rest.", culprit="mesh")
    shape = tuple(sizes[a] for a in MESH_AXES)
    dev_array = np.asarray(devices).reshape(shape)
    return Mesh(dev_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def check_rules(rules: Any, where: str = "mesh.rules") -> None:
    """A logical-axis rules table ({logical name: None, a mesh axis, or a list of distinct mesh
    axes}) is well formed, else a ConfigError naming `where` and the entry: caught when the
    config is read, not as a failure deep inside sharding."""
    if not isinstance(rules, dict):
        raise ConfigError(f"{where} must be a mapping of logical axis names to mesh axes, e.g. "
                          "{embed: fsdp, mlp: tensor}; got " f"{rules!r}.", culprit=where)
    for name, target in rules.items():
        key = f"{where}.{name}"
        if not isinstance(name, str):
            raise ConfigError(f"{where} has the key {name!r}; logical axis names are strings "
                              "(e.g. embed, mlp, heads).", culprit=where)
        axes = [target] if isinstance(target, str) else target
        if target is None:
            continue
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, str) for a in axes):
            raise ConfigError(f"{key} is {target!r}; map a logical axis to a mesh axis "
                              f"({', '.join(MESH_AXES)}), a list of them, or null (replicated).",
                              culprit=key)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ConfigError(f"{key} names {', '.join(map(repr, unknown))}, which is not a mesh "
                              f"axis; the mesh axes are {', '.join(MESH_AXES)}.", culprit=key)
        if len(set(axes)) != len(axes):
            raise ConfigError(f"{key} uses a mesh axis twice ({target!r}); a dimension is split "
                              "over each mesh axis at most once.", culprit=key)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules: dict[str, Any] | None = None) -> Iterator[None]:
    """Activate a mesh and rules for model code (activation constraints) and jax."""
    prev = dict(_current)
    _current["mesh"] = mesh
    _current["rules"] = {**DEFAULT_RULES, **(rules or {})}
    try:
        if mesh is not None:
            with jax.set_mesh(mesh):
                yield
        else:
            yield
    finally:
        _current.update(prev)


def current_mesh() -> Mesh | None:
    """The mesh activated by `use_mesh` (None outside one)."""
    return _current["mesh"]


def _mesh_axes_of(name: Any, rules: dict[str, Any]) -> tuple[str, ...]:
    """The mesh axes one dimension's logical name (or tuple of names) maps to."""
    if name is None:
        return ()
    if isinstance(name, (tuple, list)):
        return tuple(a for n in name for a in _mesh_axes_of(n, rules))
    target = rules.get(name)
    return (target,) if isinstance(target, str) else tuple(target or ())


def logical_to_spec(names: Sequence[Any], rules: dict[str, Any] | None = None,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> P:
    """Map logical axis names (one per dimension: a name, a tuple of names, or None) to a
    PartitionSpec; axes that do not divide a dimension are dropped (replicated), and a mesh axis
    is used at most once."""
    rules = rules if rules is not None else _current["rules"]
    mesh = mesh if mesh is not None else _current["mesh"]
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        axes = tuple(a for a in _mesh_axes_of(name, rules) if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                size = math.prod(mesh.shape[a] for a in axes)
                while axes and shape[i] % size:
                    axes = axes[:-1]
                    size = math.prod(mesh.shape[a] for a in axes) if axes else 1
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op without an active mesh."""
    mesh = _current["mesh"]
    if mesh is None or mesh.size == 1:
        return x
    spec = logical_to_spec(names, shape=x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# Flax's partitioning metadata keys, newest first (flax 0.12: out_sharding; earlier spellings)
FLAX_SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")


def variable_axis_names(var: nnx.Variable) -> tuple[Any, ...] | None:
    """A variable's per-dimension axis names: jaxlm's `logical_axes`, else Flax's partitioning
    annotation (`nnx.with_partitioning`); None when it has neither."""
    meta = var.get_metadata()
    names = meta.get("logical_axes")
    if names is None:
        names = next((meta[k] for k in FLAX_SHARDING_KEYS if meta.get(k) is not None), None)
    return None if names is None else tuple(names)


def _checked_rules(var: nnx.Variable, names: tuple[Any, ...], rules: dict[str, Any], mesh: Mesh,
                   path: str) -> dict[str, Any]:
    """The rules for one variable: Flax's `sharding_rules` metadata over the table, mesh axis
    names as themselves; a name that is neither a rule nor a mesh axis is a ConfigError."""
    local = dict(var.get_metadata().get("sharding_rules") or ())
    rules = {**{a: a for a in mesh.axis_names}, **rules, **local}
    flat = [n for name in names for n in (name if isinstance(name, (tuple, list)) else (name,))]
    for name in flat:
        if name is not None and name not in rules:
            known = ", ".join(sorted(k for k in rules if k not in mesh.axis_names))
            raise ConfigError(
                f"Parameter '{path}' is annotated with axis name {name!r}, which is neither a "
                f"logical axis of the rules table ({known}) nor a mesh axis "
                f"({', '.join(mesh.axis_names)}). Name one of those, or map it with "
                f"mesh.rules (e.g. --set mesh.rules.{name}=tensor, or "
                f"use_mesh(mesh, rules={{{name!r}: 'tensor'}})).", culprit="mesh.rules")
    return rules


def state_shardings(state: Any, mesh: Mesh, rules: dict[str, Any] | None = None) -> Any:
    """NamedShardings for an nnx State (or abstract one) from its variables' axis names: jaxlm's
    `logical_axes` metadata or Flax's `nnx.with_partitioning` annotation (module docstring)."""
    rules = {**DEFAULT_RULES, **(rules or {})}

    def one(path: Any, var: Any) -> Any:
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if isinstance(var, nnx.Variable) and not jax.tree.leaves(value):
            return var  # e.g. optax.MaskedNode for a frozen parameter: nothing to place
        names = variable_axis_names(var) if isinstance(var, nnx.Variable) else None
        shape = getattr(value, "shape", ())
        if not names or len(names) != len(shape):  # e.g. Adafactor's factored moments
            spec = P()
        else:
            where = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            spec = logical_to_spec(names, _checked_rules(var, names, rules, mesh, where), shape,
                                   mesh)
        sh = NamedSharding(mesh, spec)
        return var.replace(sh) if isinstance(var, nnx.Variable) else sh

    return jax.tree_util.tree_map_with_path(one, state,
                                            is_leaf=lambda v: isinstance(v, nnx.Variable))


def named_shardings(state: Any, mesh: Mesh, rules: dict[str, Any] | None = None) -> Any:
    """`state_shardings` with each Variable replaced by its NamedSharding (what jit and
    device_put take); a Variable holding no array (optax.MaskedNode) stays, to match the state."""
    return jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) and jax.tree.leaves(v) else v,
        state_shardings(state, mesh, rules), is_leaf=lambda v: isinstance(v, nnx.Variable))


def rows_sharding(mesh: Mesh, rules: dict[str, Any] | None = None) -> NamedSharding:
    """The batch axis only: leaves of a batch differ in rank (labels [B], tokens [B, T]), so jit
    takes this prefix spec and broadcasts it over each leaf."""
    return NamedSharding(mesh, P(batch_sharding(mesh, 2, rules).spec[0]))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: dict[str, Any] | None = None) -> NamedSharding:
    """Sharding for a [batch, ...] input array."""
    rules = {**DEFAULT_RULES, **(rules or {})}
    return NamedSharding(mesh, logical_to_spec(["batch"] + [None] * (ndim - 1), rules, None, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh, rules: dict[str, Any] | None = None) -> int:
    """How many ways the batch is split (the batch must divide by it)."""
    rules = {**DEFAULT_RULES, **(rules or {})}
    return math.prod(mesh.shape[a] for a in _mesh_axes_of("batch", rules))


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch -> global jax arrays sharded along the batch axis (every host
    passes its own rows). `sharding`'s spec is a prefix, for every leaf whatever its rank: the
    rows axis (`rows_sharding`), or a steps axis and the rows axis for stacked batches."""
    spec = tuple(sharding.spec)
    return {k: jax.make_array_from_process_local_data(
        NamedSharding(sharding.mesh, P(*spec, *([None] * (v.ndim - len(spec))))), v)
        for k, v in batch.items()}


def shard_params(params: Any, mesh: Mesh, rules: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(params placed on `mesh` by their logical axes, the shardings used: a prefix tree of
    `params`), as training places them; for evaluation and generation of loaded models."""
    shardings = named_shardings(params, mesh, rules)
    return jax.device_put(params, shardings), shardings


def mesh_for_run(mesh_cfg: Any | None) -> Mesh:
    """A run's mesh (its `mesh` config section) when it fits the devices here, else every device
    data-parallel: evaluation then reduces over the same shards as the run's validation."""
    if mesh_cfg is None:
        return make_mesh(-1, 1, 1)
    try:
        return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor,
                         num_devices=mesh_cfg.num_devices)
    except ConfigError:
        return make_mesh(-1, 1, 1)
