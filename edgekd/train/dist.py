"""Rank awareness, so a torchrun DDP launch can reuse the trainer: only rank 0 writes files and draws bars."""

from __future__ import annotations

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0
