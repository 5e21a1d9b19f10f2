"""ONNX: FP32 through ``torch.onnx.export`` (torch.export-based, TorchScript as fallback) and INT8 through
ONNX Runtime static quantization (QDQ).

The file is self-contained (weights inside, no external-data side file), has a dynamic batch dimension,
passes ``onnx.checker`` and opens in onnxruntime's CPU provider before it replaces anything in ``out_dir``.
FP16 is not offered: on a GPU, TensorRT makes FP16 from the FP32 file with a builder flag.
"""

from __future__ import annotations

import io as bytes_io
import json
import tempfile
import warnings
from collections.abc import Callable
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
    register_exporter,
)
from edgekd.fileio import atomic_path

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

CPU_PROVIDERS = ["CPUExecutionProvider"]
BATCH_DIM = "batch"
# Protobuf cannot serialize a message over 2 GiB; a single-file ONNX is therefore capped there.
_PROTOBUF_LIMIT = 2**31 - 1
# Batch sizes the finished file is run at once, to prove the batch dimension stayed dynamic.
_PROBE_BATCHES = (1, 3)


@register_exporter
class OnnxExporter(Exporter):
    format = "onnx"
    precisions = ("fp32", "int8")
    suffix = ".onnx"

    def precision_hint(self, precision: str) -> str:
        if precision == "fp16":
            return " (for FP16 on a GPU, build a tensorrt fp16 engine; for the CPU, use openvino fp16)"
        return ""

    def _export(self, request: ExportRequest) -> Artifact:
        if request.precision == "fp32":
            proto, details = torch_to_onnx(request.model, request.io, request.options.opset)
        else:
            proto, details = self._quantized(request)
        path = self.artifact_path(request)
        save_onnx(proto, path, request.io, request.precision, details)
        return Artifact(path, self.format, request.precision, request.io, files_size([path]), details)

    def _quantized(self, request: ExportRequest) -> tuple[onnx.ModelProto, dict[str, Any]]:
        import onnx

        assert request.calibration is not None  # Exporter.export requires it for int8
        with tempfile.TemporaryDirectory(prefix="edgekd-onnx-int8-") as work_dir:
            work = Path(work_dir)
            if request.onnx_fp32 is not None:
                fp32_path = request.onnx_fp32.path
                details = {
                    key: request.onnx_fp32.details[key]
                    for key in ("exporter", "opset")
                    if key in request.onnx_fp32.details
                }
                details["source"] = str(fp32_path)
            else:
                proto, details = torch_to_onnx(request.model, request.io, request.options.opset)
                fp32_path = work / "fp32.onnx"
                onnx.save_model(proto, str(fp32_path))
                details["source"] = "exported from the torch model"
            details["quantization"] = quantize_int8(
                fp32_path,
                work / "int8.onnx",
                request.calibration,
                request.io,
                request.options.calibration_method,
            )
            if request.options.int8_max_drop is not None:
                details["quantization"]["accuracy_control"] = (
                    "not applied: onnxruntime static quantization has no accuracy control (openvino int8 has)"
                )
            return onnx.load_model(str(work / "int8.onnx")), details


def torch_to_onnx(model: nn.Module, io: ModelIO, opset: int) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Export ``model`` in eval mode on the CPU; the caller's mode and device are restored afterwards."""
    import onnx
    import torch

    highest = onnx.defs.onnx_opset_version()
    if opset > highest:
        raise EdgekdError(
            f"export option opset: {opset} is not allowed; this onnx ({onnx.__version__}) knows up to {highest}"
        )
    details: dict[str, Any] = {"torch_version": torch.__version__, "warnings": []}
    with eval_on_cpu(model):
        example = example_batch(io)
        try:
            proto = _export_dynamo(model, example, io, opset)
            details["exporter"] = "dynamo"
        except Exception as dynamo_error:
            proto = _export_torchscript_fallback(model, example, io, opset, dynamo_error)
            details["exporter"] = "torchscript"
            details["fallback_reason"] = one_line(dynamo_error)
            message = (
                f"onnx: the torch.export-based exporter failed ({one_line(dynamo_error)}); "
                "used the TorchScript exporter instead"
            )
            warnings.warn(message, UserWarning, stacklevel=4)
            details["warnings"].append(message)
    _check_single_io(proto, io)
    details["opset"] = _default_domain_opset(proto)
    return proto, details


def _export_dynamo(model: nn.Module, example: torch.Tensor, io: ModelIO, opset: int) -> onnx.ModelProto:
    import torch

    # f=None keeps the program in memory: nothing is written until the finished file is saved atomically,
    # and the weights end up inside the one file rather than in an external-data side file.
    program = torch.onnx.export(
        model,
        (example,),
        None,
        dynamo=True,
        input_names=[io.input_name],
        output_names=[io.output_name],
        opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim(BATCH_DIM, min=1)},),
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _export_torchscript_fallback(
    model: nn.Module, example: torch.Tensor, io: ModelIO, opset: int, dynamo_error: Exception
) -> onnx.ModelProto:
    import onnx
    import torch

    buffer = bytes_io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The deprecation notice of the TorchScript exporter is ours to give, once, as the fallback warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=[io.input_name],
                output_names=[io.output_name],
                opset_version=opset,
                dynamic_axes={io.input_name: {0: BATCH_DIM}, io.output_name: {0: BATCH_DIM}},
            )
    except Exception as torchscript_error:
        raise EdgekdError(
            f"onnx: exporting {type(model).__name__} failed with both exporters; "
            f"dynamo: {one_line(dynamo_error, 200)}; torchscript: {one_line(torchscript_error, 200)}"
        ) from torchscript_error
    return onnx.load_model_from_string(buffer.getvalue())


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: np.ndarray, io: ModelIO, method: str
) -> dict[str, Any]:
    """Static QDQ quantization of ``fp32_path`` into ``out_path``; returns the settings used.

    Weights int8 symmetric per channel, activations int8 symmetric: symmetric activations (zero point 0)
    are what TensorRT's explicit quantization accepts, so the same file also builds a TensorRT INT8 engine.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    preprocessed = out_path.with_name("preprocessed.onnx")
    try:
        # Shape inference and graph optimization first, as onnxruntime recommends: it lets the quantizer see
        # every tensor's shape and fuse patterns (e.g. Conv+BN) before ranges are collected.
        quant_pre_process(str(fp32_path), str(preprocessed))
        source, preprocess = preprocessed, "shape inference + optimization"
    except Exception as error:
        source, preprocess = fp32_path, f"skipped ({one_line(error)})"
    settings = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 symmetric per-tensor",
        "calibration_method": method,
        "calibration_images": len(calibration),
        "preprocess": preprocess,
    }
    quantize_static(
        str(source),
        str(out_path),
        _calibration_reader(calibration, io.input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return settings


def _calibration_reader(images: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """Feeds one image at a time: the histogram calibrators (entropy, percentile) need equal batches."""

        def __init__(self) -> None:
            self._index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._index >= len(images):
                return None
            batch = images[self._index : self._index + 1]
            self._index += 1
            return {input_name: batch}

        def rewind(self) -> None:
            self._index = 0

    return ImageReader()


def save_onnx(
    proto: onnx.ModelProto, path: Path, io: ModelIO, precision: str, details: dict[str, Any]
) -> None:
    """Add edgekd's metadata, check the model, prove it runs at several batch sizes, then write it atomically."""
    import onnx

    metadata = {**io.metadata(), "precision": precision, "format": "onnx"}
    if "quantization" in details:
        metadata["quantization"] = json.dumps(details["quantization"])
    onnx.helper.set_model_props(proto, metadata)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise EdgekdError(
            f"onnx: the model is {proto.ByteSize() / 2**30:.1f} GiB; single-file ONNX holds at most 2 GiB "
            "(edgekd exports small students)"
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise EdgekdError(f"onnx: the exported model fails onnx.checker ({one_line(error)})") from error
    details["checker"] = "passed"
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        details["dynamic_batch"] = run_at_batches(tmp, io)


def run_at_batches(path: Path, io: ModelIO, batches: tuple[int, ...] = _PROBE_BATCHES) -> list[int]:
    """Open ``path`` in onnxruntime's CPU provider and run it at each batch size; EdgekdError if it cannot."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=CPU_PROVIDERS)
    except Exception as error:
        raise EdgekdError(
            f"onnx: the exported file does not open in onnxruntime ({one_line(error)})"
        ) from error
    for batch in batches:
        _run_once(session.run, io, batch)
    return list(batches)


def _run_once(run: Callable[..., Any], io: ModelIO, batch: int) -> None:
    images = np.zeros(io.batch_shape(batch), dtype=np.float32)
    try:
        (logits,) = run([io.output_name], {io.input_name: images})
    except Exception as error:
        raise EdgekdError(
            f"onnx: the exported model fails at batch {batch} ({one_line(error)}); is the batch size fixed "
            "in forward (e.g. x.view(2, -1))? use x.flatten(1)"
        ) from error
    if logits.shape != (batch, io.num_classes):
        raise EdgekdError(
            f"onnx: output shape {logits.shape} at batch {batch} is not allowed; "
            f"expected ({batch}, {io.num_classes}): one logit per class name"
        )


def _check_single_io(proto: onnx.ModelProto, io: ModelIO) -> None:
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [io.input_name] or outputs != [io.output_name]:
        raise EdgekdError(
            f"onnx: the model has inputs {inputs} and outputs {outputs}; edgekd exports classifiers with one "
            f"image input ({io.input_name!r}) and one logits output ({io.output_name!r})"
        )


def _default_domain_opset(proto: onnx.ModelProto) -> int | None:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None
