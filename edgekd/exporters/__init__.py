"""Exporters: a trained classifier into ONNX, OpenVINO IR or a TensorRT engine, at fp32, fp16 or int8.

``get_exporter(format).export(model, io, precision, out_dir, ...)`` writes one artifact and returns an
:class:`Artifact` describing it. Importing this package registers every backend but imports none of the
heavy runtimes (onnxruntime, openvino, nncf, tensorrt): each is imported where it is used.
"""

from __future__ import annotations

# Imported for their side effect: each module registers its exporter class.
from edgekd.exporters import onnx_export, openvino_export, tensorrt_export  # noqa: F401
from edgekd.exporters.base import (
    PRECISIONS,
    Artifact,
    Exporter,
    ExportOptions,
    ModelIO,
    export_formats,
    get_exporter,
)
from edgekd.exporters.tensorrt_export import trtexec_command

__all__ = [
    "PRECISIONS",
    "Artifact",
    "ExportOptions",
    "Exporter",
    "ModelIO",
    "export_formats",
    "get_exporter",
    "trtexec_command",
]
