"""LoRA: low-rank adapters on a built model's dense layers, on Flax's own `nnx.LoRA`.

`apply_lora(model, lora)` turns each matched `nnx.Linear` into a `LoRALinear`: the Linear's own
kernel and bias, unchanged and at their paths (`...q_proj.kernel`), plus a `ScaledLoRA` under
`...q_proj.lora` whose `lora_a` [in, r] and `lora_b` [r, out] are `nnx.LoRAParam`s. The output is
W x + (alpha / r) B A dropout(x), as in PEFT; B starts at zero, so an adapted model computes
exactly what the base did. Keeping the base at its paths means a LoRA model's parameters are the
plain model's plus the adapters: the frozen base is checkpointed, initialised from a pretrained
run and exported to Hugging Face by the code that handles plain models.

`trainable(lora)` is the one predicate that says what a LoRA run trains (adapters and the task
head); `merge_lora(model)` folds the adapters into the kernels (W + scale A B), giving back the
plain model. Adapter axes come from the base kernel's logical axes (rank axis: None), so the rules
table shards them like their layer.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fnmatch
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.config import LoRAConfig
from jaxlm.errors import ConfigError
from jaxlm.models.layers import dropout as apply_dropout
from jaxlm.models.mixed import mixed_matmul

# Named target groups (module paths, fnmatch patterns).
GROUPS: dict[str, tuple[str, ...]] = {
    "attention": tuple(f"backbone.layers.*.attn.{p}_proj" for p in "qkvo"),
    "mlp": tuple(f"backbone.layers.*.mlp.{p}_proj" for p in ("gate", "up", "down")),
}
# Roots of the parameters a LoRA run trains in full besides the adapters (the task heads).
TRAINED_HEADS = ("head",)
_SEED_STREAM = 0x10A  # adapters draw from their own stream: adding them changes no base init

_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "jaxlm_lora_dropout_key", default=None)


@contextlib.contextmanager
def adapter_dropout(key: jax.Array | None) -> Iterator[None]:
    """Within the block (while a train step is traced), adapters drop their inputs with keys
    folded from `key`; outside it (evaluation, generation) they are deterministic."""
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


class ScaledLoRA(nnx.LoRA):
    """`nnx.LoRA` with PEFT's scale (alpha / rank) and input dropout, and jaxlm's matmuls
    (`jaxlm.models.mixed`: compute-dtype inputs, float32 accumulation and output)."""

    def __init__(self, in_features: int, rank: int, out_features: int, *, scale: float,
                 dropout: float, index: int, **kwargs: Any):
        super().__init__(in_features, rank, out_features, **kwargs)
        self.scale, self.dropout, self.index = scale, dropout, index

    def __call__(self, x: jax.Array) -> jax.Array:
        """The update (alpha / r) B A x only (float32); `LoRALinear` adds the base's output."""
        key = _DROPOUT_KEY.get()
        if key is not None and self.dropout:
            x = apply_dropout(x, self.dropout, jax.random.fold_in(key, (1 << 20) + self.index))
        if self.dtype is not None:
            x = x.astype(self.dtype)
        h = mixed_matmul(x, self.lora_a[...]).astype(x.dtype)
        return mixed_matmul(h, self.lora_b[...]) * self.scale


def _linear_args(base: nnx.Linear) -> dict[str, Any]:
    """Constructor arguments of an nnx.Linear computing like `base` (weights aside)."""
    return dict(in_features=base.in_features, out_features=base.out_features,
                use_bias=base.use_bias, dtype=base.dtype, param_dtype=base.param_dtype,
                precision=base.precision, dot_general=base.dot_general,
                promote_dtype=base.promote_dtype,
                preferred_element_type=base.preferred_element_type,
                kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros)


def _with_weights(layer: nnx.Linear, kernel: nnx.Variable, bias: Any) -> nnx.Linear:
    layer.kernel = kernel
    if bias is not None:
        layer.bias = bias
    return layer


class LoRALinear(nnx.Linear):
    """An `nnx.Linear` (the base: its own kernel and bias Variables, at the same paths) plus a
    `ScaledLoRA` at `.lora`; like `nnx.LoRALinear`, built around an existing layer."""

    def __init__(self, base: nnx.Linear, lora: ScaledLoRA):
        super().__init__(**_linear_args(base), rngs=nnx.Rngs(0))
        _with_weights(self, base.kernel, base.bias)
        self.lora = lora

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        return super().__call__(x, out_sharding=out_sharding) + self.lora(x)


def as_config(lora: LoRAConfig | dict | None) -> LoRAConfig | None:
    """A LoRAConfig from a config section or its dict (model.json's "lora"); None when off."""
    if isinstance(lora, dict):
        lora = LoRAConfig(**lora)
    return lora if lora is not None and lora.rank > 0 else None


def _set_child(parent: Any, key: str | int, child: Any) -> None:
    if isinstance(key, int):
        parent[key] = child
    else:
        setattr(parent, key, child)


def dense_layers(model: nnx.Module) -> dict[str, tuple[Any, str | int, nnx.Linear]]:
    """{dotted module path: (parent, key, layer)} of every plain nnx.Linear in `model`."""
    nodes = dict(nnx.iter_graph(model))
    return {".".join(map(str, path)): (nodes[path[:-1]], path[-1], node)
            for path, node in nodes.items()
            if type(node) is nnx.Linear and path}


def match_targets(names: list[str], targets: list[str]) -> list[str]:
    """The layer paths `targets` (groups or globs) select, in model order; a target that selects
    nothing is a ConfigError listing the layers there are."""
    chosen: set[str] = set()
    for target in targets:
        patterns = GROUPS.get(target, (target,))
        hits = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not hits:
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)"
                                             if len(names) > 12 else "")
            raise ConfigError(
                f"finetune.lora.targets: '{target}' matches no dense layer of this model. Use a "
                f"group ({', '.join(GROUPS)}) or a glob over these layer paths: {shown}.",
                culprit="finetune.lora.targets")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _check_rank(name: str, layer: nnx.Linear, rank: int) -> None:
    width = min(layer.in_features, layer.out_features)
    if rank > width:
        raise ConfigError(
            f"finetune.lora.rank={rank} is larger than layer '{name}' "
            f"[{layer.in_features} -> {layer.out_features}] allows: a rank above the smaller "
            f"width ({width}) adds parameters without adding capacity. Use a rank <= {width}, or "
            "leave that layer out of finetune.lora.targets.", culprit="finetune.lora.rank")


def apply_lora(model: nnx.Module, lora: LoRAConfig | dict | None, *, seed: int = 0
               ) -> nnx.Module:
    """Adapt `model` in place (and return it): each dense layer `lora.targets` selects becomes a
    LoRALinear of rank `lora.rank`. No-op when `lora` is None or its rank 0."""
    spec = as_config(lora)
    if spec is None:
        return model
    layers = dense_layers(model)
    if spec.train_lm_head and not any(n.startswith("lm_head.") for n in layers):
        raise ConfigError(
            "finetune.lora.train_lm_head is true, but this model has no LM head weights of its "
            "own (a classifier, or an LM head tied to the token embeddings): set it to false.",
            culprit="finetune.lora.train_lm_head")
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), _SEED_STREAM))
    for index, name in enumerate(match_targets(list(layers), list(spec.targets))):
        parent, key, base = layers[name]
        _check_rank(name, base, spec.rank)
        axes = base.kernel.get_metadata().get("logical_axes") or (None, None)
        adapter = ScaledLoRA(base.in_features, spec.rank, base.out_features,
                             scale=spec.alpha / spec.rank, dropout=spec.dropout, index=index,
                             dtype=base.dtype, param_dtype=base.param_dtype, rngs=rngs,
                             a_metadata={"logical_axes": (axes[0], None)},
                             b_metadata={"logical_axes": (None, axes[1])})
        _set_child(parent, key, LoRALinear(base, adapter))
    return model


def trainable(lora: LoRAConfig | dict | None) -> Callable[[tuple, Any], bool] | None:
    """The parameters a LoRA run trains, as an nnx filter over (path, variable): the adapters
    (LoRAParam), the task head, and a causal LM's own head with `train_lm_head`. None when LoRA
    is off (everything trains)."""
    spec = as_config(lora)
    if spec is None:
        return None
    roots = TRAINED_HEADS + (("lm_head",) if spec.train_lm_head else ())

    def is_trained(path: tuple, variable: Any) -> bool:
        return isinstance(variable, nnx.LoRAParam) or (bool(path) and path[0] in roots)

    return is_trained


def merged_kernel(layer: LoRALinear) -> jax.Array:
    """W + scale * A @ B in float32 (HIGHEST precision), in the kernel's dtype."""
    a, b = layer.lora.lora_a[...], layer.lora.lora_b[...]
    delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    kernel = layer.kernel[...]
    return (kernel.astype(jnp.float32) + layer.lora.scale * delta).astype(kernel.dtype)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every adapter folded into its layer: each LoRALinear becomes a
    plain nnx.Linear with kernel W + scale * A @ B, so the copy is a plain model (`model` itself
    is returned when it has no adapters)."""
    if not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(model)):
        return model
    model = nnx.clone(model)
    nodes = dict(nnx.iter_graph(model))
    for path, node in nodes.items():
        if isinstance(node, LoRALinear):
            plain = nnx.Linear(**_linear_args(node), rngs=nnx.Rngs(0))
            kernel = node.kernel.replace(merged_kernel(node))
            _set_child(nodes[path[:-1]], path[-1], _with_weights(plain, kernel, node.bias))
    return model


def lora_spec(lora: LoRAConfig | dict | None) -> dict[str, Any] | None:
    """The adapters' settings as saved in model.json (None when LoRA is off)."""
    spec = as_config(lora)
    return None if spec is None else dataclasses.asdict(spec)


def split_adapters(params: dict) -> tuple[dict, dict]:
    """(the plain model's parameters, the adapters) of a plain nested parameter dict (or a tree
    of its shardings): what a pretrained checkpoint fills, and what it does not."""
    flat = flatten_dict(params)
    is_adapter = {p: len(p) > 1 and p[-2] == "lora" and p[-1] in ("lora_a", "lora_b")
                  for p in flat}
    return (unflatten_dict({p: v for p, v in flat.items() if not is_adapter[p]}),
            unflatten_dict({p: v for p, v in flat.items() if is_adapter[p]}))


def join_adapters(params: dict, adapters: dict) -> dict:
    """Inverse of `split_adapters`."""
    return unflatten_dict({**flatten_dict(params), **flatten_dict(adapters)})
