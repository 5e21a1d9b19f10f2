"""LiteRT (.tflite, formerly TensorFlow Lite): FP32 converted by litert-torch, INT8 by ai-edge-quantizer.

FP32: ``litert_torch.convert`` lowers the module (through torch.export and a JAX bridge, no TensorFlow) to
a flatbuffer whose input stays N×C×H×W, as PyTorch's: the converter inserts one TRANSPOSE at the input and
runs NHWC inside. INT8: ai-edge-quantizer's static recipe (int8 weights and activations) rewrites that FP32
file, calibrated on the real training images every INT8 path gets. It gives a fully int8 graph (the PT2E
route inside litert-torch leaves residual ADDs of MobileNets in float) whose input and output tensors are
int8 as well; the runner quantizes the input and dequantizes the logits with each tensor's scale and zero
point.

The batch is fixed at 1 in the file: litert-torch 0.10 cannot convert a dynamic batch through flatten or
pooling. The interpreter resizes the input at run time instead (``resize_tensor_input``), which the runner
does for any other batch size.

edgekd's metadata is a JSON object in the flatbuffer's own ``metadata`` list (entry ``edgekd``), read back
by :func:`read_metadata` with the flatbuffer schema that ships with ai-edge-litert: no torch needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
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

if TYPE_CHECKING:
    from torch import nn

METADATA_NAME = "edgekd"  # the name of edgekd's entry in the flatbuffer's metadata list
FLATBUFFER_LIMIT = 2**31  # a flatbuffer addresses its contents with 32-bit signed offsets
# A .tflite starts with a 4-byte root offset, then this file identifier.
FILE_IDENTIFIER = b"TFL3"
# What the quantizer is asked for: int8 weights (per channel) and int8 activations, calibrated (static).
INT8_RECIPE = "static_wi8_ai8"


class LiteRtExporter(Exporter):
    format = "litert"
    fake_quantized_gap = (
        "LiteRT's INT8 comes from ai-edge-quantizer's own recipe applied to the .tflite; NNCF's quantizer "
        "scales have no way into it"
    )

    def _export(self, request: ExportRequest) -> Artifact:
        self._require_packages(request.precision)
        path = self.artifact_path(request)
        with tempfile.TemporaryDirectory(prefix=".edgekd-litert-", dir=request.out_dir) as staging:
            fp32_path = Path(staging) / "fp32.tflite"
            details = convert_fp32(request.model, request.io, fp32_path)
            written = fp32_path
            if request.precision == "int8":
                written = Path(staging) / "int8.tflite"
                details["quantization"] = quantize_int8(fp32_path, written, request.calibration)
            details["batch_freed_reshapes"] = finish_file(
                written, litert_metadata(request.io, request.precision)
            )
            # Moved in whole: a failed export leaves no file at the artifact's path.
            os.replace(written, path)
        return Artifact(path, self.format, request.precision, request.io, files_size([path]), details)

    def _require_packages(self, precision: str) -> None:
        needed = [self.entry.runtime_packages[0], self.entry.export_packages[0]]
        if precision == "int8":
            needed.append(self.entry.export_packages[1])
        missing = [package.module for package in needed if not package.present]
        if missing:
            raise EdgekdError(
                f"litert {precision}: needs the {', '.join(missing)} package(s), which are not installed; "
                f"install them with: {self.entry.install}"
            )


def convert_fp32(model: nn.Module, io: ModelIO, path: Path) -> dict[str, Any]:
    """Write the FP32 .tflite of ``model`` at batch 1; returns what the artifact's details record."""
    import litert_torch
    import torch

    with eval_on_cpu(model), torch.no_grad(), quiet_converter():
        try:
            converted = litert_torch.convert(model, (example_batch(io, batch=1),))
            converted.export(str(path))
        except Exception as error:
            raise EdgekdError(
                f"litert: converting {type(model).__name__} failed ({one_line(error)})"
            ) from error
    return {
        "tool": "litert-torch",
        "litert_torch_version": _version("litert-torch"),
        "layout": "NCHW input (the converter transposes to NHWC inside)",
        "batch": "1 in the file; the interpreter resizes the input for other batch sizes",
    }


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray | None) -> dict[str, Any]:
    """Quantize the FP32 .tflite to int8 weights and activations, calibrated on ``calibration``."""
    from ai_edge_quantizer import quantizer, recipe

    assert calibration is not None  # Exporter.export requires it for int8
    signature, input_name = _signature_input(fp32_path)
    # One image per sample: the file's batch is 1.
    samples = [{input_name: calibration[i : i + 1]} for i in range(len(calibration))]
    with quiet_converter(), warnings.catch_warnings():
        # Calibration keeps every intermediate tensor on purpose; the interpreter warns that this is for
        # debugging.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
        try:
            engine = quantizer.Quantizer(str(fp32_path), getattr(recipe, INT8_RECIPE)())
            result = engine.quantize(engine.calibrate({signature: samples}))
            result.export_model(str(int8_path))
        except Exception as error:
            raise EdgekdError(f"litert int8: quantizing failed ({one_line(error)})") from error
    return {
        "tool": "ai-edge-quantizer",
        "ai_edge_quantizer_version": _version("ai-edge-quantizer"),
        "recipe": INT8_RECIPE,
        "calibration_images": len(calibration),
        "io": "int8 input and output tensors (quantize the input, dequantize the logits)",
    }


def _signature_input(path: Path) -> tuple[str, str]:
    """The model's one signature and its one input's name, as the quantizer's calibration data keys them."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    if len(signatures) != 1:
        raise EdgekdError(f"litert: the converted model has signatures {list(signatures)}; expected one")
    (name, signature), *_ = signatures.items()
    if len(signature["inputs"]) != 1:
        raise EdgekdError(f"litert: the converted model has inputs {signature['inputs']}; expected one image")
    return name, signature["inputs"][0]


def litert_metadata(io: ModelIO, precision: str) -> dict[str, str]:
    return {**io.metadata(), "precision": precision, "format": "litert"}


def finish_file(path: Path, metadata: dict[str, str]) -> list[int]:
    """Rewrite the .tflite at ``path``: its batch-pinned reshapes freed (see :func:`free_reshape_batch`) and
    ``metadata`` added; returns the freed RESHAPE operators' indices."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    inline_external_buffers(model, data, path)
    freed = free_reshape_batch(model)
    add_metadata(model, metadata)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    path.write_bytes(bytes(builder.Output()))
    return freed


def inline_external_buffers(model: Any, data: bytes, path: Path) -> int:
    """Move the constants stored after the flatbuffer into it; returns how many buffers moved.

    ai-edge-quantizer writes a model whose constants exceed 256 KB with its buffers after the flatbuffer
    (each Buffer's `offset` and `size` point into the file). Re-packing the flatbuffer writes the flatbuffer
    alone, so those constants would be cut off and every offset would point past the end of the file (the
    interpreter then refuses it: "Constant buffer ... specified an out of range offset"). A student of an
    edge toolchain is far below the flatbuffer's 2 GB, so its constants go inside.
    """
    moved = 0
    for buffer in model.buffers:
        if buffer.offset > 1:  # 0: no external data; 1: the quantizer's placeholder while it packs
            end = buffer.offset + buffer.size
            if end > len(data):
                raise EdgekdError(
                    f"litert: '{path}' is cut short (a constant ends at byte {end:,} of {len(data):,})"
                )
            buffer.data = np.frombuffer(data[buffer.offset : end], dtype=np.uint8)
            buffer.offset, buffer.size = 0, 0
            moved += 1
    if moved and sum(0 if b.data is None else len(b.data) for b in model.buffers) >= FLATBUFFER_LIMIT:
        raise EdgekdError(
            f"litert: '{path}' holds 2 GB or more of constants, more than one flatbuffer can hold"
        )
    return moved


def free_reshape_batch(model: Any) -> list[int]:
    """Turn the leading 1 of each RESHAPE's constant target shape into -1 where the reshape keeps the batch
    dimension first; returns those operators' indices.

    The file is converted at batch 1, and the converter writes reshapes with that 1 baked in: for a
    one-channel input it replaces the NCHW-to-NHWC transpose by a RESHAPE to [1, H, W, 1], which the
    interpreter cannot resize to another batch. With -1 (the size that fits) the same graph runs any batch.
    A shape tensor that any other operator reads is left alone.
    """
    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    reshape_codes = {
        i for i, code in enumerate(model.operatorCodes) if code.builtinCode == schema.BuiltinOperator.RESHAPE
    }
    readers: dict[int, int] = {}
    for op in graph.operators:
        for tensor in op.inputs:
            readers[int(tensor)] = readers.get(int(tensor), 0) + 1
    freed = []
    for index, op in enumerate(graph.operators):
        if op.opcodeIndex not in reshape_codes or len(op.inputs) < 2 or readers[int(op.inputs[1])] != 1:
            continue
        source, target = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        data = model.buffers[graph.tensors[op.inputs[1]].buffer].data
        if data is None or source.shape[0] != 1 or target.shape[0] != 1:
            continue
        shape = np.frombuffer(bytes(data), dtype=np.int32).copy()
        if len(shape) and shape[0] == 1:
            shape[0] = -1
            model.buffers[graph.tensors[op.inputs[1]].buffer].data = np.frombuffer(shape.tobytes(), np.uint8)
            freed.append(index)
    return freed


def add_metadata(model: Any, metadata: dict[str, str]) -> None:
    """Put ``metadata`` (JSON) into the model's metadata list as entry ``edgekd``, replacing an older one."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [item for item in (model.metadata or []) if _name(item.name) != METADATA_NAME]
    model.metadata = [*kept, entry]


def read_metadata(path: Path) -> dict[str, str]:
    """edgekd's metadata of a .tflite as strings; {} for a file edgekd did not write. Needs ai-edge-litert's
    flatbuffer schema only (no torch, no interpreter)."""
    from ai_edge_litert import schema_py_generated as schema

    data = check_tflite_file(Path(path))
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _name(entry.Name()) == METADATA_NAME:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception as error:
        raise EdgekdError(f"litert: '{path}' cannot be read ({one_line(error)})") from None
    return {}


def check_tflite_file(path: Path) -> bytes:
    """The file's bytes, if it looks like a .tflite flatbuffer; checked first, because the schema reader and
    the interpreter crash or fail obscurely on a truncated or foreign file."""
    data = path.read_bytes()
    if data[4:8] != FILE_IDENTIFIER:
        raise EdgekdError(
            f"litert: '{path}' is not a .tflite model (no {FILE_IDENTIFIER.decode()} file identifier); "
            "allowed: a file edgekd export wrote"
        )
    return data


def _name(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """The converter and the quantizer print progress bars and MLIR notes to stdout and stderr, which would
    bury edgekd's own output; they are kept and shown only when the conversion fails."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        try:
            yield
        except Exception:
            shown = captured.getvalue().strip()
            if shown:
                print(shown[-4000:], file=sys.stderr)
            raise
