"""Exporters: a trained classifier into ONNX, OpenVINO IR or a TensorRT engine, at fp32, fp16 or int8.

``get_exporter(format).export(model, io, precision, out_dir, ...)`` writes one artifact and returns an
:class:`Artifact` describing it. Each format's exporter class is named by its entry in the backend catalog
(edgekd.formats) and imported on first use; none of the heavy runtimes (onnx, onnxruntime, openvino, nncf,
tensorrt) is imported before it is used, so this package imports fast and works where a backend is missing.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.exporters.base import (
    Artifact,
    Exporter,
    ExportOptions,
    ModelIO,
    TargetBuild,
    export_formats,
    get_exporter,
)
from edgekd.exporters.tensorrt_export import onnx_for_tensorrt, trtexec_command
from edgekd.formats import FORMATS, PRECISIONS, backend_of_suffix

__all__ = [
    "PRECISIONS",
    "Artifact",
    "ExportOptions",
    "Exporter",
    "ModelIO",
    "TargetBuild",
    "export_formats",
    "get_exporter",
    "onnx_for_tensorrt",
    "read_metadata",
    "trtexec_command",
]


def read_metadata(path: str | Path) -> dict[str, str]:
    """edgekd's metadata stored in an artifact (an .onnx file, an OpenVINO .xml: each format's catalog entry
    names its reader); ``ModelIO.from_metadata`` reads it back."""
    path = Path(path)
    entry = backend_of_suffix(path.suffix)
    if entry is None or entry.metadata_reader is None:
        readers = [fmt.suffix for fmt in FORMATS.values() if fmt.metadata_reader is not None]
        note = f" ({entry.metadata_note})" if entry is not None and entry.metadata_note else ""
        raise EdgekdError(
            f"artifact: '{path}' is not allowed; metadata is read from {' or '.join(readers)} files{note}"
        )
    if not entry.artifact_exists(path):
        raise EdgekdError(f"artifact: '{path}' does not exist")
    return entry.read_metadata(path) or {}
