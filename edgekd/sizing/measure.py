"""Time one family member as the shipped student would run: exported in the target format and precision,
with random weights whose BatchNorm statistics come from real training images, INT8 calibrated on real
images, through the same latency harness as the final artifacts.

Why the BatchNorm statistics: with the defaults (mean 0, variance 1) activations grow or vanish layer by
layer, and a CPU slows down on denormal numbers, so random statistics could mistime FP32; INT8 scales also
follow the real activation ranges.
"""

from __future__ import annotations

import io
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.bench import LatencyConfig, Runner, TorchRunner, measure_latency
from edgekd.exporters import ExportOptions, ModelIO, get_exporter
from edgekd.formats import FORMATS, format_of_runtime
from edgekd.models.budget import Member
from edgekd.models.registry import create_model
from edgekd.runtime import artifact_runner
from edgekd.sizing.fingerprint import LatencyTarget

# BatchNorm statistics are averaged over this many real training images, in batches of this size.
STATISTICS_IMAGES = 256
STATISTICS_BATCH = 64


@dataclass(frozen=True)
class SizingInputs:
    """The real images and settings every member is prepared with."""

    images: np.ndarray  # N×C×H×W float32, normalized as the model is fed (training images, no augmentation)
    io: ModelIO
    export: ExportOptions
    seed: int
    device: str = "cpu"  # where a pytorch target runs


def time_member(member: Member, target: LatencyTarget, inputs: SizingInputs) -> dict[str, float]:
    """p50/p90/p99 (ms) of one member at the target's batch, threads and timing settings."""
    model = random_member(member, target, inputs)
    # NNCF draws progress bars on stdout while quantizing: noise around sizing's own progress line.
    with tempfile.TemporaryDirectory(prefix="edgekd-sizing-") as folder, redirect_stdout(io.StringIO()):
        runner = member_runner(model, target, inputs, Path(folder))
        settings = LatencyConfig(**{**target.timing, "batches": [target.batch], "threads": target.threads})
        timing = measure_latency(runner, inputs.io.image_shape, settings, seed=inputs.seed).at_batch(
            target.batch
        )
    return {"p50": timing.p50_ms, "p90": timing.p90_ms, "p99": timing.p99_ms}


def random_member(member: Member, target: LatencyTarget, inputs: SizingInputs) -> nn.Module:
    """The member with seeded random weights and BatchNorm statistics of the real images, in eval mode."""
    name, model_args = member
    torch.manual_seed(inputs.seed)
    model = create_model(name, target.num_classes, target.input_shape[0], **model_args)
    set_batchnorm_statistics(model, inputs.images)
    return model


@torch.no_grad()
def set_batchnorm_statistics(model: nn.Module, images: np.ndarray) -> None:
    """Running mean and variance of every BatchNorm layer = the plain average over the first images."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average, not an exponential one
    model.train()
    used = images[:STATISTICS_IMAGES]
    for start in range(0, len(used), STATISTICS_BATCH):
        batch = used[start : start + STATISTICS_BATCH]
        if len(batch) > 1:  # one image gives no variance in a 1×1 feature map
            model(torch.from_numpy(np.ascontiguousarray(batch)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def member_runner(model: nn.Module, target: LatencyTarget, inputs: SizingInputs, folder: Path) -> Runner:
    """Export the member as the target runs it (nothing for pytorch) and return its (unloaded) runner."""
    if target.backend == "pytorch":
        return TorchRunner(model.to(inputs.device), threads=target.threads, device=inputs.device)
    export_format = format_of_runtime(target.backend)
    int8 = target.precision == "int8"
    artifact = get_exporter(export_format).export(
        model,
        inputs.io,
        target.precision,
        folder,
        options=inputs.export,
        calibration=inputs.images if int8 else None,
        stem="sizing",
    )
    return artifact_runner(artifact, target.threads, target.device)


def sizing_export_options(opset: int, max_batch: int, calibration_method: str, images: int) -> ExportOptions:
    """The recipe's export settings that shape the graph; INT8 without accuracy control (random weights
    have no accuracy to keep; the quantized graph is the same)."""
    return ExportOptions(
        opset=opset,
        max_batch=max_batch,
        calibration_size=images,
        calibration_method=calibration_method,
        int8_max_drop=None,
    )


# Names in the latency cache's key that differ from the ExportOptions field (tables written before the
# catalog keep their key).
_KEY_NAMES = {"calibration_size": "calibration_images"}


def describe_export(options: ExportOptions, format_name: str) -> dict[str, Any]:
    """The export settings that change ``format_name``'s artifact, as its catalog entry lists them: the
    latency cache's key, so a timing is never reused for an artifact built differently."""
    return {
        _KEY_NAMES.get(name, name): getattr(options, name) for name in FORMATS[format_name].export_options
    }
