"""OpenVINO IR (.xml + .bin): FP32, FP16 (weights compressed to FP16) and INT8 (NNCF post-training quantization).

The model is converted from the FP32 ONNX artifact when one is given (one graph for every CPU format), else
from the torch module. The batch dimension is dynamic (-1). The .xml and .bin are written as a pair: both go
into a temporary folder beside them and are then moved in, so a failure leaves neither.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.exporters.base import (
    Artifact,
    Exporter,
    ExportRequest,
    ModelIO,
    eval_on_cpu,
    example_batch,
    files_size,
    one_line,
)
from edgekd.fileio import native_writes

if TYPE_CHECKING:
    import openvino as ov
    from torch import nn

RT_INFO_SECTION = "edgekd"  # our metadata lives under rt_info["edgekd"], beside NNCF's own "nncf" section


class OpenVinoExporter(Exporter):
    format = "openvino"
    exports_fake_quantized = True

    def _export(self, request: ExportRequest) -> Artifact:
        ov_model, details = self._convert(request)
        if request.fake_quantized is not None:
            details["quantization"] = {"tool": "nncf (quantization-aware)", "format": "FakeQuantize"}
        elif request.precision == "int8":
            ov_model, details["quantization"] = quantize_int8(ov_model, request)
        # FP16 compresses the weights (compute stays at the device's precision). INT8 keeps its float
        # constants (biases, quantizer ranges) at FP32: they are few, and the ranges must stay exact.
        compress = request.precision == "fp16"
        details["compress_to_fp16"] = compress
        set_metadata(ov_model, request.io, request.precision, details)
        xml_path = self.artifact_path(request)
        save_pair(ov_model, xml_path, compress_to_fp16=compress)
        size = files_size([xml_path, xml_path.with_suffix(".bin")])
        return Artifact(xml_path, self.format, request.precision, request.io, size, details)

    def _convert(self, request: ExportRequest) -> tuple[ov.Model, dict[str, Any]]:
        import openvino as ov

        details: dict[str, Any] = {"openvino_version": ov.get_version(), "warnings": []}
        if request.fake_quantized is not None:
            # Its quantizers become the IR's FakeQuantize ops, as NNCF's PTQ of an IR writes them.
            ov_model = torch_to_openvino(request.fake_quantized, request.io)
            details["source"] = "the quantization-aware student (traced with its NNCF quantizers)"
        elif request.onnx_fp32 is not None:
            ov_model = onnx_to_openvino(request.onnx_fp32.path)
            details["source"] = f"onnx: {request.onnx_fp32.path}"
        else:
            ov_model = torch_to_openvino(request.model, request.io)
            details["source"] = "torch module (traced)"
        name_io(ov_model, request.io)
        details["dynamic_batch"] = make_batch_dynamic(ov_model, request.io, details["warnings"])
        return ov_model, details


def onnx_to_openvino(path: Path) -> ov.Model:
    import openvino as ov

    try:
        return ov.convert_model(str(path))
    except Exception as error:
        raise EdgekdError(f"openvino: converting '{path}' failed ({one_line(error)})") from error


def torch_to_openvino(model: nn.Module, io: ModelIO) -> ov.Model:
    import openvino as ov
    import torch

    with eval_on_cpu(model), warnings.catch_warnings():
        # openvino traces the module with torch.jit, whose deprecation notice says nothing to our users; nor
        # does its trace check on a quantization-aware student, whose quantizers trace as FakeQuantize ops and
        # so differ from the float simulation by rounding (parity is checked on the artifact instead).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            return ov.convert_model(
                model,
                example_input=example_batch(io),
                input=[ov.PartialShape([-1, *io.image_shape])],
            )
        except Exception as error:
            raise EdgekdError(
                f"openvino: converting {type(model).__name__} failed ({one_line(error)})"
            ) from error


def name_io(ov_model: ov.Model, io: ModelIO) -> None:
    if len(ov_model.inputs) != 1 or len(ov_model.outputs) != 1:
        raise EdgekdError(
            f"openvino: the model has {len(ov_model.inputs)} inputs and {len(ov_model.outputs)} outputs; "
            "edgekd exports classifiers with one image input and one logits output"
        )
    ov_model.input(0).get_tensor().set_names({io.input_name})
    ov_model.output(0).get_tensor().set_names({io.output_name})


def make_batch_dynamic(ov_model: ov.Model, io: ModelIO, notes: list[str]) -> bool:
    """Make the batch dimension -1 if it is not yet; False (with a warning added to ``notes``) where the graph
    pins it."""
    import openvino as ov

    if ov_model.input(0).get_partial_shape()[0].is_dynamic:
        return True
    try:
        ov_model.reshape({0: ov.PartialShape([-1, *io.image_shape])})
        return True
    except Exception as error:
        message = f"openvino: the batch dimension stays static ({one_line(error)})"
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
        return False


def quantize_int8(ov_model: ov.Model, request: ExportRequest) -> tuple[ov.Model, dict[str, Any]]:
    """NNCF post-training quantization (FakeQuantize ops in the IR); accuracy-controlled when asked.

    With ``options.int8_max_drop`` set, ``nncf.quantize_with_accuracy_control`` keeps the most harmful layers
    in float until the top-1 accuracy on ``validation`` drops by at most ``int8_max_drop``, an absolute
    accuracy fraction (0.01 = one percentage point), not a relative one.
    """
    import nncf

    assert request.calibration is not None  # Exporter.export requires it for int8
    calibration = nncf.Dataset(_single_images(request.calibration))
    settings: dict[str, Any] = {
        "tool": "nncf",
        "nncf_version": nncf.__version__,
        "preset": "performance",
        "calibration_images": len(request.calibration),
    }
    common = {"subset_size": len(request.calibration), "preset": nncf.QuantizationPreset.PERFORMANCE}
    max_drop = request.options.int8_max_drop
    if max_drop is None:
        return nncf.quantize(ov_model, calibration, **common), settings
    if request.validation is None:
        raise EdgekdError(
            f"export option int8_max_drop: {max_drop} needs validation images and labels; none were given "
            "(give validation=(images, labels) or leave int8_max_drop unset)"
        )
    images, labels = request.validation
    validation = nncf.Dataset(list(zip(_single_images(images), labels.tolist(), strict=True)), _image_of)
    quantized = nncf.quantize_with_accuracy_control(
        ov_model,
        calibration,
        validation,
        validation_fn=top1_accuracy,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        **common,
    )
    settings.update({"accuracy_control": "nncf.quantize_with_accuracy_control", "max_drop": max_drop})
    settings.update({"drop_type": "absolute top-1 fraction", "validation_images": len(images)})
    return quantized, settings


def top1_accuracy(compiled_model: Any, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
    """NNCF validation function: top-1 accuracy (a fraction) and each item's correctness (1.0 or 0.0)."""
    correct = []
    for image, label in items:
        logits = compiled_model(image)[0]
        correct.append(float(int(np.argmax(logits, axis=-1)[0]) == int(label)))
    return (float(np.mean(correct)) if correct else 0.0), correct


def _single_images(images: np.ndarray) -> list[np.ndarray]:
    # One image per item: NNCF's subset_size and accuracy-control ranking count items, not batches.
    return [images[i : i + 1] for i in range(len(images))]


def _image_of(item: tuple[np.ndarray, int]) -> np.ndarray:
    return item[0]


def set_metadata(ov_model: ov.Model, io: ModelIO, precision: str, details: dict[str, Any]) -> None:
    """The same string fields as the ONNX metadata, under rt_info["edgekd"] (saved inside the .xml)."""
    metadata = {**io.metadata(), "precision": precision, "format": "openvino"}
    for key, value in metadata.items():
        ov_model.set_rt_info(value, [RT_INFO_SECTION, key])


_IR_HEAD = re.compile(rb"^(\xef\xbb\xbf)?\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<net[\s>]", re.DOTALL)


def check_ir_files(xml_path: Path) -> None:
    """An OpenVINO IR is an .xml whose root is <net> and a .bin beside it. Checked here because OpenVINO,
    given anything else, tries its other frontends (TensorFlow text, ...) and prints their parser noise."""
    with open(xml_path, "rb") as file:
        head = file.read(4096)
    if not head:
        raise EdgekdError(
            f"openvino IR: '{xml_path}' is empty (0 bytes); allowed: an .xml written by edgekd export"
        )
    if not _IR_HEAD.match(head):
        raise EdgekdError(
            f"openvino IR: '{xml_path}' is not an OpenVINO IR (an XML file whose root element is <net>)"
        )
    bin_path = xml_path.with_suffix(".bin")
    if not bin_path.is_file():
        raise EdgekdError(
            f"openvino IR: the weights '{bin_path}' beside '{xml_path}' are missing; an IR is the .xml and "
            "its .bin"
        )


def read_metadata(xml_path: Path) -> dict[str, str]:
    """edgekd's rt_info fields of a saved IR, as strings."""
    import openvino as ov

    check_ir_files(xml_path)
    try:
        ov_model = ov.Core().read_model(str(xml_path), str(xml_path.with_suffix(".bin")))
    except Exception as error:
        raise EdgekdError(f"openvino IR: '{xml_path}' cannot be read ({one_line(error)})") from None
    if not ov_model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = ov_model.get_rt_info()[RT_INFO_SECTION]
    return {key: ov_model.get_rt_info([RT_INFO_SECTION, key]).astype(str) for key in section}


def save_pair(ov_model: ov.Model, xml_path: Path, *, compress_to_fp16: bool) -> None:
    """Write ``xml_path`` and its .bin so that a failure leaves neither of them (and no temporary folder)."""
    import openvino as ov

    bin_path = xml_path.with_suffix(".bin")
    staging = xml_path.with_name(f".{xml_path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    moved_bin = False
    try:
        with native_writes(xml_path):
            ov.save_model(ov_model, str(staging / xml_path.name), compress_to_fp16=compress_to_fp16)
        # The .bin goes first: a reader that finds the new .xml always finds its .bin.
        os.replace(staging / bin_path.name, bin_path)
        moved_bin = True
        os.replace(staging / xml_path.name, xml_path)
    except BaseException:
        if moved_bin:
            # The new .bin is in place but its .xml is not: an older .xml there no longer matches it.
            bin_path.unlink(missing_ok=True)
            xml_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
