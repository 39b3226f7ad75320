"""Optimizers and per-iteration learning-rate schedules."""

from __future__ import annotations

import math

import torch

from prunecli.config.train import Optimizer, Schedule, TrainingOptions
from prunecli.errors import OptionError


def build_optimizer(cfg: TrainingOptions, model: torch.nn.Module, params=None) -> torch.optim.Optimizer:
    """The optimizer over ``params`` (default: the model's trainable parameters).

    A learned-mask method passes its own (edge-popup's scores, with the weights frozen).
    """
    # BatchNorm and bias parameters get weight decay too, as in the papers' reference code
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise OptionError(f"{{optimizer}} {cfg.optimizer!r}: invalid; valid: {', '.join(o.value for o in Optimizer)}")


def lr_factor(cfg: TrainingOptions, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration ``step`` (0-based) of the run."""
    warm = int(round(cfg.lr_warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return (step + 1) / warm
    epoch = step // max(1, steps_per_epoch)  # step schedules change at epoch boundaries, as in the papers
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (epoch // max(1, cfg.step_size))
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.resolved_milestones() if epoch >= m)
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch - warm)
        t = min(1.0, (step - warm) / total)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise OptionError(f"{{schedule}} {cfg.schedule!r}: invalid; valid: {', '.join(o.value for o in Schedule)}")


def build_scheduler(cfg: TrainingOptions, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    lr_factor(cfg, 0, steps_per_epoch)  # validate the schedule name before training starts

    def factor(step: int) -> float:
        return lr_factor(cfg, step, steps_per_epoch)

    # LambdaLR's state_dict is plain data (the closure itself is not stored)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
