"""ExecuTorch (.pte): a ``torch.export`` program lowered to the XNNPACK delegate; INT8 by PT2E quantization.

FP32: ``torch.export.export`` captures the module, ``to_edge_transform_and_lower`` hands every op XNNPACK
takes to its delegate, and ``to_executorch`` serializes the program. INT8: the captured graph is prepared
with XNNPACK's own quantizer (symmetric int8, weights per channel), calibrated on the real training images
every INT8 path gets, converted, captured again and lowered the same way. Input and output stay float32:
the quantize and dequantize steps are inside the program.

The batch is dynamic but bounded. With a convolution in the graph, XNNPACK's lowering narrows any declared
upper bound to :data:`MAX_BATCH` (15 with executorch 1.5.1), so that is what is declared; the runner reads
the bound from the file and runs larger batches as consecutive calls of at most that many images.

edgekd's metadata is a JSON string returned by a constant method of the program (:data:`METADATA_METHOD`),
read back through ExecuTorch's Python runtime. That runtime links libtorch, so reading it, like running the
model, needs torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
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

METADATA_METHOD = "edgekd_metadata"  # the program's constant method that returns edgekd's metadata
# The largest batch XNNPACK keeps in a dynamic batch dimension of a graph with convolutions (executorch 1.5.1
# narrows 16, 32, 64 or 128 to 15); declaring it keeps the file's bound the one we asked for.
MAX_BATCH = 15
# A .pte is a flatbuffer: a 4-byte root offset, then "ET" and a two-digit schema version ("ET12").
FILE_IDENTIFIER_PREFIX = b"ET"
INSTALL = "pip install 'edgekd[executorch]'"


class ExecuTorchExporter(Exporter):
    format = "executorch"
    fake_quantized_gap = (
        "ExecuTorch's XNNPACK INT8 comes from torch's PT2E quantizer with its own observers; NNCF's "
        "quantizer scales have no way into it"
    )

    def _export(self, request: ExportRequest) -> Artifact:
        self._require_packages(request.precision)
        path = self.artifact_path(request)
        with warnings.catch_warnings():
            # torch.export and the quantizer warn about APIs they use internally; nothing a user can act on.
            warnings.simplefilter("ignore")
            with eval_on_cpu(request.model):
                program, details = capture(request)
                buffer, details["lowering"] = lower_to_xnnpack(
                    program, executorch_metadata(request.io, request.precision)
                )
        write_atomically(buffer, path)
        return Artifact(path, self.format, request.precision, request.io, files_size([path]), details)

    def _require_packages(self, precision: str) -> None:
        needed = list(self.entry.runtime_packages)
        if precision == "int8":
            needed.extend(self.entry.export_packages)
        missing = [package.module for package in needed if not package.present]
        if missing:
            raise EdgekdError(
                f"executorch {precision}: needs the {', '.join(missing)} package(s), which are not "
                f"installed; install them with: {self.entry.install}"
            )


def capture(request: ExportRequest) -> tuple[Any, dict[str, Any]]:
    """The ExportedProgram to lower (quantized for INT8) and what the artifact's details record."""
    details: dict[str, Any] = {
        "tool": "executorch",
        "executorch_version": _version("executorch"),
        "torch_version": _version("torch"),
        "batch": f"dynamic, 1..{MAX_BATCH} per call (larger batches run in chunks)",
    }
    model = request.model
    if request.precision == "int8":
        assert request.calibration is not None  # Exporter.export requires it for int8
        model, details["quantization"] = quantize_int8(model, request.io, request.calibration)
    return export_dynamic_batch(model, request.io), details


def export_dynamic_batch(model: nn.Module, io: ModelIO) -> Any:
    """``torch.export`` of ``model`` with a batch dimension of 1..MAX_BATCH."""
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    try:
        return torch.export.export(model, (example_batch(io),), dynamic_shapes=({0: batch},))
    except Exception as error:
        raise EdgekdError(
            f"executorch: torch.export of {type(model).__name__} failed ({one_line(error)})"
        ) from error


def quantize_int8(model: nn.Module, io: ModelIO, calibration: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """PT2E static INT8 with XNNPACK's quantizer, calibrated on ``calibration``; returns the converted
    module (fake-quantize ops that the lowering turns into int8 kernels) and its details."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        prepared = prepare_pt2e(export_dynamic_batch(model, io).module(), quantizer)
        with torch.no_grad():
            for start in range(0, len(calibration), MAX_BATCH):
                prepared(torch.from_numpy(calibration[start : start + MAX_BATCH]))
        converted = convert_pt2e(prepared)
    except EdgekdError:
        raise
    except Exception as error:
        raise EdgekdError(f"executorch int8: PT2E quantization failed ({one_line(error)})") from error
    return converted, {
        "tool": "torchao PT2E with XNNPACKQuantizer",
        "torchao_version": _version("torchao"),
        "scheme": "symmetric int8, weights per channel, static activations; float input and output",
        "calibration_images": len(calibration),
    }


def lower_to_xnnpack(program: Any, metadata: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """The serialized .pte of ``program`` with XNNPACK taking what it can, and ``metadata`` as a constant
    method; returns it and which ops were left to ExecuTorch's portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: json.dumps(metadata)},
        )
        buffer = edge.to_executorch().buffer
    except Exception as error:
        raise EdgekdError(f"executorch: lowering to XNNPACK failed ({one_line(error)})") from error
    return buffer, delegation_summary(edge.exported_program())


def delegation_summary(program: Any) -> dict[str, Any]:
    """How many XNNPACK delegate calls the program makes and which ops run outside them (slower)."""
    # A target is an op overload or a Python function (printed with its address): keep names only.
    targets = [
        getattr(node.target, "__name__", str(node.target))
        for node in program.graph.nodes
        if node.op == "call_function"
    ]
    delegated = [target for target in targets if "executorch_call_delegate" in target]
    left = sorted({target for target in targets if target not in delegated and "getitem" not in target})
    return {"delegate": "XNNPACK", "delegate_calls": len(delegated), "ops_outside_delegate": left}


def executorch_metadata(io: ModelIO, precision: str) -> dict[str, str]:
    return {
        **io.metadata(),
        "precision": precision,
        "format": "executorch",
        "max_batch_per_call": str(MAX_BATCH),
    }


def write_atomically(data: bytes, path: Path) -> None:
    """Write to a temporary file beside ``path`` and move it in whole: a failed write leaves no artifact."""
    handle, staging = tempfile.mkstemp(prefix=".edgekd-executorch-", suffix=".pte", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def load_runtime() -> Any:
    """ExecuTorch's Python ``Runtime``, or a one-line error that says what is missing: the runtime links
    libtorch, so torch is needed as well as executorch."""
    import importlib.util

    missing = [name for name in ("torch", "executorch") if importlib.util.find_spec(name) is None]
    if missing:
        raise EdgekdError(
            f"executorch: ExecuTorch's Python runtime needs {' and '.join(missing)} (it links libtorch, so "
            f"a bench-only install without torch cannot run .pte files); install them with: {INSTALL}"
        )
    with warnings.catch_warnings():
        # executorch.runtime announces itself as experimental on import.
        warnings.simplefilter("ignore")
        from executorch.runtime import Runtime

    return Runtime.get()


def load_program(path: Path) -> Any:
    """The ExecuTorch program in ``path``, checked to be a .pte first (the runtime's own error is a bare code)."""
    check_pte_file(path)
    runtime = load_runtime()
    try:
        return runtime.load_program(str(path))
    except (RuntimeError, ValueError) as error:
        raise EdgekdError(
            f"executorch: '{path}' cannot be loaded ({one_line(error)}); allowed: a .pte edgekd export wrote"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """edgekd's metadata of a .pte as strings; {} for a program edgekd did not write."""
    program = load_program(Path(path))
    if METADATA_METHOD not in program.method_names:
        return {}
    try:
        (text,) = program.load_method(METADATA_METHOD).execute([])
        return json.loads(text)
    except (RuntimeError, ValueError, TypeError) as error:
        raise EdgekdError(f"executorch: '{path}' has unreadable metadata ({one_line(error)})") from None


def check_pte_file(path: Path) -> None:
    """EdgekdError unless ``path`` starts like an ExecuTorch program."""
    with open(path, "rb") as file:
        head = file.read(8)
    if head[4:6] != FILE_IDENTIFIER_PREFIX or not head[6:8].isdigit():
        raise EdgekdError(
            f"executorch: '{path}' is not a .pte program (no ET file identifier); allowed: a file edgekd "
            "export wrote"
        )


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
