"""Optimizers and learning-rate schedules from config, all from optax."""
from __future__ import annotations

from typing import Any

import jax
import optax

from jaxlm.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to `min_lr` (or constant)."""
    decay_steps = max((cfg.decay_steps or total_steps), cfg.warmup_steps + 1)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, decay_steps,
                                                  end_value=cfg.min_lr)
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else None
    if cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, cfg.min_lr, decay_steps - cfg.warmup_steps)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup is None:
        return after
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask_fn(decay_embeddings: bool = False):
    """Weight decay applies to matrices only: not to norms, biases or (by default) embeddings."""

    def mask(params: Any) -> Any:
        def keep(path: tuple, leaf: Any) -> bool:
            names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
            return getattr(leaf, "ndim", 0) >= 2 and (decay_embeddings or "embedding" not in names)

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask


def _optimizer(cfg: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    decay_mask = decay_mask_fn(cfg.decay_embeddings)
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask)
    if cfg.name == "lion":
        return optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.name == "adafactor":
        return optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                               weight_decay_mask=decay_mask)
    # sgd with momentum; decoupled weight decay added before the update, as in AdamW
    opt = optax.sgd(lr, momentum=cfg.momentum)
    if cfg.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), opt)
    return opt


def backbone_labels(params: Any) -> Any:
    """'backbone' for parameters under the top-level `backbone` key, 'head' for the rest."""
    def label(path: tuple, _: Any) -> str:
        first = path[0] if path else None
        return "backbone" if str(getattr(first, "key", first)) == "backbone" else "head"

    return jax.tree_util.tree_map_with_path(label, params)


def build_optimizer(cfg: OptimConfig, total_steps: int, *, backbone_lr_scale: float = 1.0,
                    freeze_backbone: bool = False
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation (clipping + optimizer) and its schedule.

    For fine-tuning, the backbone can be frozen or trained with `backbone_lr_scale` times the
    head's learning rate (optax.multi_transform over the two parameter groups).
    """
    lr = learning_rate_schedule(cfg, total_steps)
    if freeze_backbone or backbone_lr_scale != 1.0:
        backbone = (optax.set_to_zero() if freeze_backbone else
                    _optimizer(cfg, lambda step: lr(step) * backbone_lr_scale))
        opt = optax.multi_transform({"backbone": backbone, "head": _optimizer(cfg, lr)},
                                    backbone_labels)
    else:
        opt = _optimizer(cfg, lr)
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, lr
