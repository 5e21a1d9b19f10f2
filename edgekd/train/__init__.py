"""Training: the loop, optimizers and schedules, checkpoints."""

from edgekd.train.trainer import FitResult, Trainer, evaluate

__all__ = ["FitResult", "Trainer", "evaluate"]
