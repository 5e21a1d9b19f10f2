"""Every distillation method; importing this package registers them all."""

from edgekd.distill.methods import at, finetune, fitnet, kd, ofd, refilled, rkd, rkd_ft, scratch, skd  # noqa: F401
