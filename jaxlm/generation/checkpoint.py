"""Loading a trained causal LM from a run directory for generation and evaluation.

Only the parameters are read from the checkpoint (an orbax partial restore): the optimizer state,
often twice the size of the model, never leaves the disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxlm.config import Config
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.models import build_model
from jaxlm.sharding import make_mesh, state_shardings
from jaxlm.train.checkpoint import abstract_with_shardings
from jaxlm.train.run_dir import load_run_config


def _key_name(k: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    raise TypeError(f"unsupported pytree key {k!r}")


def _nest(tree: Any) -> tuple[dict, list[tuple], Any]:
    """A plain nested dict with the same key paths as `tree` (how orbax stored it), the paths,
    and the treedef to rebuild `tree` from leaves."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    nested: dict = {}
    paths = []
    for path, leaf in flat:
        names = tuple(_key_name(k) for k in path)
        node = nested
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = leaf
        paths.append(names)
    return nested, paths, treedef


def _get(nested: dict, names: tuple) -> Any:
    for n in names:
        nested = nested[n]
    return nested


def restore_params(checkpoint_dir: str | Path, abstract_params: Any, shardings: Any,
                   step: int | None = None) -> tuple[Any, int]:
    """Restore only state["params"] of a jaxlm checkpoint onto `shardings`; (params, step)."""
    directory = Path(checkpoint_dir).absolute()
    mgr = ocp.CheckpointManager(directory, item_names=("state", "data"))
    try:
        step = mgr.latest_step() if step is None else step
        if step is None or step not in mgr.all_steps():
            have = list(mgr.all_steps())
            raise CheckpointError(
                f"No checkpoint{'' if step is None else f' at step {step}'} in '{directory}' "
                f"(steps found: {have or 'none'}). Train the run first, or pick one of those steps.",
                culprit=str(directory))
        target = abstract_with_shardings(abstract_params, shardings)
        nested, paths, treedef = _nest(target)
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), nested)
        try:
            out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                {"params": nested}, restore_args={"params": restore_args}, partial_restore=True)))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"The checkpoint at step {step} in '{directory}' does not match the model in the "
                f"run's config.yaml ({type(e).__name__}: {str(e)[:300]}). Generate with the run "
                "directory the checkpoint was trained in.", culprit=str(directory)) from None
    finally:
        mgr.close()
    restored = out["state"]["params"]
    return jax.tree.unflatten(treedef, [_get(restored, p) for p in paths]), step


def load_run(run_dir: str | Path, *, step: int | None = None, mesh=None,
             rules: dict | None = None) -> tuple[nnx.Module, TextTokenizer, Config]:
    """(CausalLM with the run's latest (or `step`) parameters, its tokenizer, its config).

    The parameters are placed on `mesh` (default: one device) with the training sharding rules.
    """
    from jaxlm.train.pretrain import model_config_for  # heavy import chain; only needed here

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if cfg.train.objective != "causal":
        raise ConfigError(f"Run '{run_dir}' trained a '{cfg.train.objective}' model; generation "
                          "needs a causal language model (train.objective=causal).",
                          culprit=str(run_dir))
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"Run '{run_dir}' has no tokenizer.json. It is written when "
                              "training starts: point --run at a complete run directory.",
                              culprit=str(tok_path))
    tok = TextTokenizer.load(tok_path)
    mcfg = model_config_for(cfg, tok)
    abstract = jax.eval_shape(lambda: nnx.state(build_model(mcfg, "causal"), nnx.Param))
    mesh = mesh if mesh is not None else make_mesh(1, 1, 1, jax.devices()[:1])
    shardings = state_shardings(abstract, mesh, rules if rules is not None else cfg.mesh.rules)
    shardings = jax.tree.map(lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
                             shardings, is_leaf=lambda v: isinstance(v, nnx.Variable))
    params, _ = restore_params(run_dir / "checkpoints", abstract, shardings, step)
    with nnx.use_eager_sharding(False):
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(mcfg, "causal")), nnx.Param)
    return nnx.merge(graphdef, params), tok, cfg
