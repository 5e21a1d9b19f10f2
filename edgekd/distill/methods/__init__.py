"""Every distillation method; importing this package registers them all."""

from edgekd.distill.methods import finetune, kd, scratch  # noqa: F401
