"""The fake-quantized student: the selected FP32 student with NNCF's simulated-INT8 quantizers inserted and
calibrated (post-training), the starting point of quantization-aware training.

Why NNCF's PyTorch quantizer (and not torch's PT2E QAT): its quantized student exports both to OpenVINO
(``openvino.convert_model`` turns its quantizers into the IR's FakeQuantize) and to ONNX as
QuantizeLinear/DequantizeLinear pairs that ONNX Runtime runs as integer kernels, from the same quantizer
scales; it is already edgekd's OpenVINO post-training quantizer (same preset, same placement rules), and it
needs nothing beyond the base install. PT2E's quantizers (XNNPACK, X86Inductor) live in executorch and
torchao, which the base install does not carry, and reach OpenVINO and ONNX Runtime only through
experimental paths. The quantizer configuration (which tensors, 8 bits, symmetric per-channel weights and
per-tensor activations: NNCF's PERFORMANCE preset, as OpenVINO PTQ uses, with one scale per activation
tensor where the preset would give a depthwise convolution's input one per channel) is fixed by the
calibration; the training then moves the weights and the quantizers' scales, never where quantizers sit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekd.int8.fold import fold_batchnorms


@dataclass(frozen=True)
class FakeQuantized:
    """The calibrated fake-quantized student and how it was made."""

    model: nn.Module
    quantizers: int
    folded_batchnorms: int
    not_folded: str | None  # why BatchNorms stayed (held in eval mode), or None
    calibration_images: int

    def describe(self) -> dict:
        import nncf

        return {
            "tool": "nncf.quantize (PyTorch) + quantization-aware training",
            "nncf_version": nncf.__version__,
            "preset": "performance",
            "quantizers": self.quantizers,
            "calibration_images": self.calibration_images,
            "batchnorms_folded": self.folded_batchnorms,
            **({"batchnorms_not_folded": self.not_folded} if self.not_folded else {}),
        }


def fake_quantize(student: nn.Module, calibration: np.ndarray) -> FakeQuantized:
    """A calibrated fake-quantized copy of ``student`` (left untouched), on the CPU, in eval mode.

    Deterministic on one machine: the same student and images give the same quantizer scales, so a resumed
    quantization-aware stage rebuilds exactly the model its checkpoint belongs to."""
    # NNCF compiles its quantization kernels (a torch C++ extension) on first use and gives up after 60 s by
    # default: too short on a busy 2-core machine. A user's own setting stands.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    import nncf

    model = copy.deepcopy(student).to("cpu").eval()
    folded, not_folded = fold_batchnorms(model)
    if isinstance(model, nn.Sequential):
        # NNCF registers its hook storage as a child of the root module, which a root Sequential would then
        # call as a layer
        model = SequentialRoot(model)
    images = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    with quiet_nncf():
        quantized = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(images),
            advanced_parameters=per_tensor_activations(),
        )
    return FakeQuantized(quantized.eval(), len(quantizers_of(quantized)), folded, not_folded, len(images))


class SequentialRoot(nn.Module):
    """A root ``nn.Sequential`` student, held one level down for NNCF."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def per_tensor_activations():
    """NNCF's CPU placement gives a depthwise convolution's input one activation scale per channel, which
    OpenVINO runs but ONNX Runtime cannot: its QLinearConv takes one input scale, so such a convolution stays
    float between Dequantize/Quantize (a MobileNetV2's QAD artifact ran 5.4x slower than its PTQ one). One
    scale per activation tensor everywhere suits both runtimes; everything else stays the preset's."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    return AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(per_channel=False)
    )


def quantizers_of(model: nn.Module) -> list[nn.Module]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return [module for module in model.modules() if isinstance(module, BaseQuantizer)]


@contextlib.contextmanager
def onnx_qdq_export(model: nn.Module) -> Iterator[None]:
    """While exporting to ONNX, the quantizers write QuantizeLinear/DequantizeLinear pairs (ONNX Runtime's
    integer kernels) instead of OpenVINO's FakeQuantize custom op."""
    from nncf.torch.quantization.layers import QuantizerExportMode

    quantizers = quantizers_of(model)
    for quantizer in quantizers:
        quantizer.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    try:
        yield
    finally:
        for quantizer in quantizers:
            quantizer.set_export_mode(QuantizerExportMode.FAKE_QUANTIZE)


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """NNCF logs its torch extension's compilation and each algorithm at INFO: noise in a build log."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
