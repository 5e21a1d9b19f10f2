"""Exporters: a trained classifier into ONNX, OpenVINO IR or a TensorRT engine, at fp32, fp16 or int8.

``get_exporter(format).export(model, io, precision, out_dir, ...)`` writes one artifact and returns an
:class:`Artifact` describing it. Importing this package registers every backend but imports none of the
heavy runtimes (onnx, onnxruntime, openvino, nncf, tensorrt): each is imported where it is used, so this
package imports fast and works where a backend is missing.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError

# Imported for their side effect too: each backend module registers its exporter class.
from edgekd.exporters import onnx_export, openvino_export, tensorrt_export  # noqa: F401
from edgekd.exporters.base import (
    Artifact,
    Exporter,
    ExportOptions,
    ModelIO,
    export_formats,
    get_exporter,
)
from edgekd.exporters.tensorrt_export import onnx_for_tensorrt, trtexec_command
from edgekd.formats import PRECISIONS

__all__ = [
    "PRECISIONS",
    "Artifact",
    "ExportOptions",
    "Exporter",
    "ModelIO",
    "export_formats",
    "get_exporter",
    "onnx_for_tensorrt",
    "read_metadata",
    "trtexec_command",
]


def read_metadata(path: str | Path) -> dict[str, str]:
    """edgekd's metadata stored in an .onnx file or an OpenVINO .xml; ``ModelIO.from_metadata`` reads it back.

    TensorRT engines hold no metadata: keep the ONNX file they were built from beside them.
    """
    path = Path(path)
    readers = {".onnx": onnx_export.read_metadata, ".xml": openvino_export.read_metadata}
    if path.suffix not in readers:
        raise EdgekdError(
            f"artifact: '{path}' is not allowed; metadata is read from {' or '.join(readers)} files"
        )
    if not path.is_file():
        raise EdgekdError(f"artifact: '{path}' does not exist")
    return readers[path.suffix](path)
