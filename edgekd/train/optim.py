"""Optimizers and per-epoch learning-rate schedules from the recipe's `train:` section."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from edgekd.config.train import OptimizerConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, lr_factor: float = 1.0):
    lr = cfg.lr * lr_factor
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_multiplier(epoch: int, epochs: int, cfg: ScheduleConfig) -> float:
    """Factor applied to the base learning rate during `epoch` (0-based)."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    if cfg.name == "multistep":
        passed = sum(epoch >= m for m in cfg.milestones)
        if cfg.factors is not None:
            return 1.0 if passed == 0 else cfg.factors[passed - 1]
        return cfg.gamma**passed
    if cfg.name == "cosine":
        span = max(1, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """A LambdaLR stepped once per epoch; its state is just the epoch count, so resuming is exact."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_multiplier(epoch, epochs, cfg))
