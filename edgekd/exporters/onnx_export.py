"""ONNX: FP32 through ``torch.onnx.export`` (torch.export-based, TorchScript as fallback), FP16 converted
from the FP32 graph by ONNX Runtime's float16 converter, and INT8 through ONNX Runtime static quantization
(QDQ).

The file is self-contained (weights inside, no external-data side file), has a dynamic batch dimension,
passes ``onnx.checker`` and opens in onnxruntime's CPU provider before it replaces anything in ``out_dir``.
FP16 is for ONNX Runtime's CUDA execution provider: weights and arithmetic in float16, the input and the
logits kept float32 (a Cast at each end), so every runner and the parity check still see float32. The CPU
provider runs it too, slowly (it casts back to float32 around the operators it has no float16 kernel for).
TensorRT makes its own FP16 engines from the FP32 file with a builder flag.

INT8 comes in two Q/DQ flavours of one calibration (see :data:`INT8_TARGETS`): the ONNX artifact is tuned
for ONNX Runtime on a CPU, and the TensorRT exporter asks for the flavour TensorRT's ONNX parser accepts.
"""

from __future__ import annotations

import contextlib
import copy
import io as bytes_io
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
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

# The two Q/DQ flavours. Weights are int8, symmetric, per output channel in both.
#  - "cpu": uint8 asymmetric activations (U8S8). ONNX Runtime's CPU kernels are fastest with it: on an
#    AVX-512 VNNI CPU a small ResNet ran ~4x faster than with int8 activations (which ran slower than FP32).
#  - "tensorrt": int8 symmetric activations and float biases. TensorRT's explicit quantization accepts only
#    zero points of 0 and rejects DequantizeLinear on int32 tensors (ONNX Runtime's quantized biases).
INT8_TARGETS: dict[str, dict[str, Any]] = {
    "cpu": {"activations": "uint8", "symmetric_activations": False, "quantize_bias": True},
    "tensorrt": {"activations": "int8", "symmetric_activations": True, "quantize_bias": False},
}


class OnnxExporter(Exporter):
    format = "onnx"
    exports_fake_quantized = True

    def _export(self, request: ExportRequest) -> Artifact:
        if request.fake_quantized is not None:
            proto, details = fake_quantized_proto(request)
        elif request.precision == "fp32":
            proto, details = torch_to_onnx(request.model, request.io, request.options.opset)
        elif request.precision == "fp16":
            proto, details = float16_proto(request)
        else:
            proto, details = quantized_proto(request, target="cpu")
        path = self.artifact_path(request)
        save_onnx(proto, path, request.io, request.precision, details)
        return Artifact(path, self.format, request.precision, request.io, files_size([path]), details)


def quantized_proto(request: ExportRequest, *, target: str) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The INT8 Q/DQ model for ``target`` (a key of INT8_TARGETS), from ``onnx_fp32`` or a fresh FP32 export."""
    import onnx

    if request.calibration is None:
        raise EdgekdError("calibration: none given; int8 needs calibration images")
    with tempfile.TemporaryDirectory(prefix="edgekd-onnx-int8-") as work_dir:
        work = Path(work_dir)
        fp32_path, details = fp32_source(request, work)
        details["quantization"] = quantize_int8(
            fp32_path,
            work / "int8.onnx",
            request.calibration,
            request.io,
            request.options.calibration_method,
            target=target,
        )
        if request.options.int8_max_drop is not None:
            details["quantization"]["accuracy_control"] = (
                "not applied: onnxruntime static quantization has no accuracy control (openvino int8 has)"
            )
        return onnx.load_model(str(work / "int8.onnx")), details


def fake_quantized_proto(request: ExportRequest) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The quantization-aware student's own quantizers as QuantizeLinear/DequantizeLinear pairs.

    Through the TorchScript exporter: NNCF writes its quantizers with a `symbolic` function, which only that
    exporter reads (torch.export traces through them into float arithmetic)."""
    import torch

    from edgekd.int8.fake_quant import onnx_qdq_export
    from edgekd.int8.qdq_unsigned import unsigned_activations

    model = request.fake_quantized
    with eval_on_cpu(model), onnx_qdq_export(model):
        proto = export_torchscript(model, example_batch(request.io), request.io, request.options.opset)
    _check_single_io(proto, request.io)
    unsigned = unsigned_activations(proto)
    details = {
        "torch_version": torch.__version__,
        "exporter": "torchscript",
        "opset": _default_domain_opset(proto),
        "warnings": [],
        "source": "the quantization-aware student (its NNCF quantizers as QuantizeLinear/DequantizeLinear)",
        "quantization": {
            "tool": "nncf (quantization-aware)",
            "format": "QDQ",
            # the same values as NNCF's int8 ones, in the type ONNX Runtime's x86 build fuses into integer kernels
            "signed_activations_written_as_uint8": unsigned,
        },
    }
    return proto, details


def float16_proto(request: ExportRequest) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP16 model, from ``onnx_fp32`` or a fresh FP32 export: every float tensor and operator in float16
    except the graph's input and output, which stay float32 behind a Cast (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory(prefix="edgekd-onnx-fp16-") as work_dir:
        fp32_path, details = fp32_source(request, Path(work_dir))
        fp32 = onnx.load_model(str(fp32_path))
    try:
        with _quiet_logs():
            proto = convert_float_to_float16(fp32, keep_io_types=True)
    except Exception as error:
        raise EdgekdError(f"onnx: converting the FP32 graph to FP16 failed ({one_line(error)})") from error
    # The converter appends the input's Cast after the nodes that read it; onnx.checker wants them in order.
    sort_nodes(proto.graph)
    details["float16"] = {
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "weights": "float16 (values outside its finite range clipped into it)",
        "io": "float32 input and logits, cast at the graph's ends",
    }
    return proto, details


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in topological order, keeping the given order wherever it already is one."""
    produced = {name for node in graph.node for name in node.output}
    available = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    pending, ordered = [copy.deepcopy(node) for node in graph.node], []
    while pending:
        waiting = []
        for node in pending:
            # A name no node produces is an input, an initializer or the empty name of an omitted input.
            if all(name in available or name not in produced for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise EdgekdError(f"onnx: the graph has a cycle through {', '.join(n.name for n in waiting[:3])}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def fp32_source(request: ExportRequest, work: Path) -> tuple[Path, dict[str, Any]]:
    """The FP32 ONNX file to convert from: the given ``onnx_fp32`` artifact, else a fresh export into ``work``."""
    import onnx

    if request.onnx_fp32 is not None:
        given = request.onnx_fp32.details
        details = {key: given[key] for key in ("exporter", "opset") if key in given}
        # The FP32 export's own warnings stay in its artifact's details, reported once.
        details["warnings"] = []
        details["source"] = str(request.onnx_fp32.path)
        return request.onnx_fp32.path, details
    proto, details = torch_to_onnx(request.model, request.io, request.options.opset)
    path = work / "fp32.onnx"
    onnx.save_model(proto, str(path))
    details["source"] = "exported from the torch model"
    return path, details


def torch_to_onnx(model: nn.Module, io: ModelIO, opset: int) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Export ``model`` in eval mode on the CPU; the caller's mode and device are restored afterwards.

    The torch.export-based exporter goes first. Where it fails, or cannot produce the requested opset (it
    writes opset 18+ and converts down, which fails for many graphs), the TorchScript exporter is used and
    the reason is recorded in ``details["warnings"]`` and given as a UserWarning.
    """
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
            proto = export_dynamo(model, example, io, opset)
            details["exporter"] = "dynamo"
        except Exception as dynamo_error:
            reason = one_line(root_cause(dynamo_error))
            proto = export_torchscript(model, example, io, opset, dynamo_error)
            details["exporter"] = "torchscript"
            details["fallback_reason"] = reason
            message = (
                f"onnx: the torch.export-based exporter failed ({reason}); "
                "used the TorchScript exporter instead"
            )
            warnings.warn(message, UserWarning, stacklevel=4)
            details["warnings"].append(message)
    _check_single_io(proto, io)
    details["opset"] = _default_domain_opset(proto)
    return proto, details


def export_dynamo(model: nn.Module, example: torch.Tensor, io: ModelIO, opset: int) -> onnx.ModelProto:
    """torch.onnx.export(dynamo=True) with a dynamic batch dimension; raises if it fails or misses ``opset``."""
    import torch

    # f=None keeps the program in memory: nothing is written until the finished file is saved atomically,
    # and the weights end up inside the one file rather than in an external-data side file.
    with _quiet_logs():
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
    proto = program.model_proto
    written = _default_domain_opset(proto)
    if written != opset:
        # Below its own lowest opset the exporter converts down and, where that fails, silently keeps its
        # own: a file for an older runtime would then not load there.
        raise RuntimeError(f"it wrote opset {written}, not the requested opset {opset}")
    return proto


def export_torchscript(
    model: nn.Module,
    example: torch.Tensor,
    io: ModelIO,
    opset: int,
    dynamo_error: BaseException | None = None,
) -> onnx.ModelProto:
    """torch.onnx.export(dynamo=False) with a dynamic batch axis: the fallback exporter."""
    import onnx
    import torch

    buffer = bytes_io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet_logs():
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
        dynamo = f"dynamo: {one_line(root_cause(dynamo_error), 200)}; " if dynamo_error is not None else ""
        raise EdgekdError(
            f"onnx: exporting {type(model).__name__} failed; {dynamo}"
            f"torchscript: {one_line(torchscript_error, 200)}"
        ) from torchscript_error
    return onnx.load_model_from_string(buffer.getvalue())


def root_cause(error: BaseException) -> BaseException:
    """The innermost chained exception: torch.onnx wraps the real reason in a generic 'step 1/3' message."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    # torch.export, torch.fx and onnxscript log (or print to stderr) graph dumps and tracebacks for failures
    # that are handled here (the fallback, the opset check); the outcome is reported once, in
    # details["warnings"] or in the EdgekdError.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(bytes_io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: np.ndarray, io: ModelIO, method: str, *, target: str = "cpu"
) -> dict[str, Any]:
    """Static QDQ quantization of ``fp32_path`` into ``out_path`` for ``target``; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in INT8_TARGETS:
        raise EdgekdError(f"int8 target: {target!r} is not allowed; allowed: {', '.join(INT8_TARGETS)}")
    flavour = INT8_TARGETS[target]
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    source, preprocess = _preprocess(fp32_path, out_path.with_name("preprocessed.onnx"))
    activations = "symmetric" if flavour["symmetric_activations"] else "asymmetric"
    settings = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "target": target,
        "weights": "int8 symmetric per-channel",
        "activations": f"{flavour['activations']} {activations} per-tensor",
        "biases": "int32" if flavour["quantize_bias"] else "float",
        "calibration_method": method,
        "calibration_images": len(calibration),
        "preprocess": preprocess,
    }
    with _quiet_logs():
        quantize_static(
            str(source),
            str(out_path),
            _calibration_reader(calibration, io.input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8 if flavour["activations"] == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={
                "ActivationSymmetric": flavour["symmetric_activations"],
                "WeightSymmetric": True,
                "QuantizeBias": flavour["quantize_bias"],
            },
        )
    return settings


def _preprocess(fp32_path: Path, out_path: Path) -> tuple[Path, str]:
    """Shape inference and graph optimization first, as onnxruntime recommends: the quantizer then sees
    every tensor's shape and fused patterns (e.g. Conv+BN) before ranges are collected. Optional: a graph
    the optimizer cannot handle is quantized as it is."""
    from onnxruntime.quantization import quant_pre_process

    try:
        with _quiet_logs():
            quant_pre_process(str(fp32_path), str(out_path))
    except Exception as error:
        return fp32_path, f"skipped ({one_line(error)})"
    return out_path, "shape inference + optimization"


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
    details.setdefault("warnings", [])
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        details["dynamic_batch"] = run_at_batches(tmp, io)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (edgekd's io description among them), as strings."""
    proto = load_checked(path)
    return {entry.key: entry.value for entry in proto.metadata_props}


def refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise EdgekdError(
            f"onnx file: '{path}' is empty (0 bytes); allowed: an ONNX model written by edgekd export"
        )


def load_checked(path: Path) -> onnx.ModelProto:
    """The ONNX model in `path` (weights inline), or an EdgekdError that says what is wrong with the file."""
    import onnx

    refuse_empty(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:
        raise EdgekdError(f"onnx file: '{path}' cannot be read as ONNX ({one_line(error)})") from None
    if not proto.graph.node:
        # protobuf reads many byte strings as a valid, empty message
        raise EdgekdError(f"onnx file: '{path}' is not an ONNX model (it holds no graph)")
    return proto


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
