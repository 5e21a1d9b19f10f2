"""Shared by the runner tests: models whose BatchNorm statistics are not the identity."""

from __future__ import annotations

import torch


def with_batchnorm_statistics(net: torch.nn.Module) -> torch.nn.Module:
    """`net` in eval mode with random running means and variances, so a dropped or mis-fused BatchNorm shows
    in a parity check."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()
