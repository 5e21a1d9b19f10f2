"""The deployment formats, the precisions each writes, and how close each precision must stay to PyTorch.

Declared once here and read everywhere else: the recipe checks its export targets against it, each exporter
takes its precisions and file suffix from it, the command line offers its names, the deployment stage
exports in its order, the runners pick a backend by its suffixes, and the parity check and the recipe's
parity section take their default tolerances from it. It imports nothing beyond the standard library, so a
recipe can be checked (and `edgekd --help` shown) without loading a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# Every precision an artifact can hold, in the order artifacts are exported and reported.
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class Format:
    """One deployment format: what it writes and what runs it."""

    name: str
    precisions: tuple[str, ...]  # a subset of PRECISIONS, in their order
    suffixes: tuple[str, ...]  # the first is the one its exporter writes; its runner reads them all
    backend: str  # the runner (`edgekd bench --backend`) that runs its files
    description: str

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


# In export order: the FP32 ONNX comes first because the TensorRT engines are built from it.
FORMATS: dict[str, Format] = {
    declared.name: declared
    for declared in (
        Format(
            "onnx",
            PRECISIONS,
            (".onnx",),
            "onnxruntime",
            "ONNX with a dynamic batch; FP16 weights and arithmetic behind FP32 input and output (for ONNX "
            "Runtime's CUDA execution provider); INT8 as ONNX Runtime Q/DQ (tuned for its CPU provider)",
        ),
        Format(
            "openvino",
            PRECISIONS,
            (".xml",),
            "openvino",
            "OpenVINO IR (.xml graph, .bin weights beside it); FP16-compressed weights, INT8 by NNCF",
        ),
        Format(
            "tensorrt",
            PRECISIONS,
            (".engine", ".plan"),
            "tensorrt",
            "TensorRT engine, built on the target GPU from the ONNX (INT8 from a Q/DQ ONNX)",
        ),
    )
}
# pydantic reads a Literal of the names, so a recipe naming another format gets the list of these.
FormatName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {name: fmt.precisions for name, fmt in FORMATS.items()}
# The runner a file's suffix implies when none is named.
BACKEND_FOR_SUFFIX: dict[str, str] = {
    suffix: fmt.backend for fmt in FORMATS.values() for suffix in fmt.suffixes
}
BACKENDS: tuple[str, ...] = tuple(dict.fromkeys(fmt.backend for fmt in FORMATS.values()))


@dataclass(frozen=True)
class ParityDefault:
    """How close an artifact's logits must stay to the PyTorch student's unless a recipe says otherwise; a
    None limit is not checked."""

    max_abs: float | None  # largest absolute logit difference
    min_top1: float | None  # least fraction of images whose top-1 class agrees


PARITY_DEFAULTS: dict[str, ParityDefault] = {
    # FP32 must match to rounding, which catches a wrong preprocessing, a missed layer or a silent bf16
    # downcast (2e-2 on ResNet-18 logits).
    "fp32": ParityDefault(max_abs=1e-3, min_top1=None),
    # FP16 rounds every activation: a looser bound, and the answers must still agree.
    "fp16": ParityDefault(max_abs=5e-2, min_top1=0.99),
    # INT8 changes logits by design: judged by top-1 agreement, not by absolute error.
    "int8": ParityDefault(max_abs=None, min_top1=0.95),
}


def formats_writing(precision: str) -> list[str]:
    """The formats whose exporter writes ``precision``."""
    return [name for name, fmt in FORMATS.items() if precision in fmt.precisions]
