"""What a model needs in memory to train or evaluate, estimated on the meta device (nothing is allocated).

The estimate is deliberately a floor: weights, their gradients and the optimizer's state, plus every leaf
module's output for a batch (what autograd keeps for the backward pass, give or take). A run whose floor
exceeds the machine's memory cannot succeed, so it is refused before anything is built or written; a run
under it may still be tight, which PyTorch then reports itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.models._common import evaluating

FLOAT_BYTES = 4
# Adam keeps two moments per weight, SGD with momentum one; assume the larger.
OPTIMIZER_STATES = 2


@dataclass(frozen=True)
class Footprint:
    """A model's bytes: its weights, and the outputs of its leaf modules for one image."""

    weight_bytes: int
    outputs_per_image: int  # sum over leaf modules: kept for the backward pass in training
    largest_output_per_image: int  # the biggest single leaf output: what inference holds at a time

    def training_bytes(self, batch: int) -> int:
        # weights + gradients + optimizer state, and the activations of one batch
        return self.weight_bytes * (2 + OPTIMIZER_STATES) + self.outputs_per_image * batch

    def inference_bytes(self, batch: int) -> int:
        # a layer's input and output are alive together
        return self.weight_bytes + 2 * self.largest_output_per_image * batch


def footprint(build: Callable[[], nn.Module], input_shape: tuple[int, int, int]) -> Footprint:
    """Build the model on the meta device and run one image through it in training mode, summing outputs."""
    with torch.device("meta"):
        model = build()
    sizes: list[int] = []

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [leaf.register_forward_hook(record) for leaf in leaves]
    try:
        image = torch.empty(1, *input_shape, device="meta")
        with evaluating(model):  # eval: BatchNorm on a one-image batch; the outputs are the same size
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    weight_bytes = sum(t.numel() * FLOAT_BYTES for t in (*model.parameters(), *model.buffers()))
    return Footprint(weight_bytes, sum(sizes), max(sizes, default=0))


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Memory the run may use on `device`, and how it was measured (for the error message)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {torch.cuda.get_device_name(device)}"
    from edgekd.bench.environment import available_memory_bytes

    return available_memory_bytes()


def gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.0f} MiB"
