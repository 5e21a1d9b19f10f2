"""BatchNorm over the global batch of a data-parallel run, and back to plain BatchNorm for export.

On CUDA this is PyTorch's own SyncBatchNorm. PyTorch's SyncBatchNorm refuses CPU tensors, so CPU (gloo)
runs use :class:`GlobalBatchNorm2d`: the per-channel sum, sum of squares and count are summed over the
processes by one all-reduce per layer (whose backward all-reduces the gradient), so its statistics and
gradients are those of one process holding the whole batch. It is a BatchNorm2d subclass with the same
parameters and buffers, so checkpoints and feature taps see the same module; after training every
synchronized layer is turned back into a plain BatchNorm2d, the module ONNX and the other exporters know.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: every process's output depends on every process's input, so the
    gradient of an input is the sum over the processes of their outputs' gradients, another all-reduce."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        summed = values.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed


def all_reduce(values: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(values)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from every process's share of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        count = x.new_full((1,), x.numel() // channels)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)
        self._update_running_stats(mean.detach(), var.detach(), total.detach())
        scale = torch.rsqrt(var + self.eps)
        y = (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def _copy_batchnorm(source: nn.modules.batchnorm._BatchNorm, target_class: type) -> nn.Module:
    """A BatchNorm of another class holding the same values, on the same device, in the same mode."""
    reference = source.weight if source.weight is not None else source.running_mean
    placement = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    target = target_class(
        source.num_features,
        source.eps,
        source.momentum,
        source.affine,
        source.track_running_stats,
        **placement,
    )
    target.load_state_dict(source.state_dict())
    target.train(source.training)
    for name, param in source.named_parameters(recurse=False):
        getattr(target, name).requires_grad_(param.requires_grad)
    return target


def _replace(module: nn.Module, convert) -> nn.Module:
    replaced = convert(module)
    if replaced is not None:
        return replaced
    for name, child in module.named_children():
        module.add_module(name, _replace(child, convert))
    return module


def synchronize_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `module` computing its statistics over the global batch: PyTorch's SyncBatchNorm
    on CUDA, GlobalBatchNorm2d on the CPU (returns `module`, the same object unless it is a BatchNorm)."""
    synced = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d

    def convert(layer: nn.Module) -> nn.Module | None:
        return _copy_batchnorm(layer, synced) if type(layer) is nn.BatchNorm2d else None

    return _replace(module, convert)


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`synchronize_batchnorm`: plain BatchNorm2d layers with the trained values."""

    def convert(layer: nn.Module) -> nn.Module | None:
        if isinstance(layer, nn.SyncBatchNorm | GlobalBatchNorm2d):
            return _copy_batchnorm(layer, nn.BatchNorm2d)
        return None

    return _replace(module, convert)


@contextlib.contextmanager
def global_batchnorm_in_place(module: nn.Module) -> Iterator[None]:
    """For the block, every plain BatchNorm2d of `module` computes its statistics over the global batch: its
    class becomes GlobalBatchNorm2d in place (on CUDA too). For the parts a stage's objective builds beside
    the student (connectors, transforms), which the stage's optimizer already holds: replacing them by new
    modules, as synchronize_batchnorm does, would leave it holding the old parameters. GlobalBatchNorm2d
    adds no state to BatchNorm2d, so the class swap is exact both ways."""
    layers = [layer for layer in module.modules() if type(layer) is nn.BatchNorm2d]
    for layer in layers:
        layer.__class__ = GlobalBatchNorm2d
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = nn.BatchNorm2d
