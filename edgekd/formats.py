"""The backend catalog: each deployment format with its exporter, its runner, the packages they need, the
precisions it writes, the shape of its artifact and the export options that change it; and how close each
precision must stay to PyTorch.

Declared once here and read everywhere else: the recipe checks its export targets and its latency budget's
runtime against it, ``get_exporter`` and ``runner_for`` import the classes an entry names, the deployment
stage exports in its order, sizing keys its latency cache on each entry's export options, the environment
record lists its packages, the plots take its markers and `edgekd list backends` prints it. It imports
nothing beyond the standard library: exporters, runners and metadata readers are ``module:name`` strings
imported on first use, and a package's presence is looked up with find_spec. So a recipe is checked (and
`edgekd --help` shown) without loading a backend.

Adding a backend takes:

1. its exporter file, ``edgekd/exporters/<format>_export.py``: an ``Exporter`` subclass with
   ``format = "<format>"`` (its precisions and suffix come from its entry);
2. its runner file, ``edgekd/bench/runners/<runtime>_runner.py``: a ``Runner`` subclass;
3. its entry in ``CATALOG`` below (for an optional runtime, also its extra in pyproject.toml);
4. its tests; tests/test_backend_catalog.py already loads every entry's classes.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

# Every precision an artifact can hold, in the order artifacts are exported and reported.
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class Package:
    """A Python package a backend needs: the module find_spec looks for, and the pip distributions that
    provide it (the first one installed gives the version the environment record shows)."""

    module: str
    distributions: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        # find_spec says whether it is installed without importing it (importing tensorrt initializes CUDA).
        return importlib.util.find_spec(self.module) is not None


@dataclass(frozen=True)
class Backend:
    """One deployment format and the runtime that runs its artifacts.

    ``name`` is the format (a key of the recipe's ``export.targets``, an artifact's ``format``); ``runtime``
    is what runs it (``edgekd bench --backend``, ``student.budget.latency.backend``).
    """

    name: str
    runtime: str
    precisions: tuple[str, ...]  # a subset of PRECISIONS, in their order
    suffixes: tuple[str, ...]  # the first is the one its exporter writes; its runner reads them all
    description: str
    exporter: str  # "module:Class" of its Exporter
    runner: str  # "module:Class" of its Runner
    # What its runner imports (all present: its artifacts run here) and what its exporter needs beyond that.
    runtime_packages: tuple[Package, ...]
    export_packages: tuple[Package, ...] = ()
    # The pyproject extra that installs its runtime; None: the base install has it.
    extra: str | None = None
    # The artifact: one file (the path) or a folder (``directory``: a CoreML .mlpackage, say), with the
    # files of ``companions``' suffixes beside the path (OpenVINO's .bin beside its .xml).
    directory: bool = False
    companions: tuple[str, ...] = ()
    # Suffixes its runner reads beyond its own (OpenVINO reads ONNX too, so one .onnx compares on both).
    also_reads: tuple[str, ...] = ()
    # The ExportOptions fields its exporter reads: the export settings that change its artifact. Sizing keys
    # its latency cache on them, so a timing is never reused for an artifact built differently.
    export_options: tuple[str, ...] = ()
    # What deployment tells its runner: "precision" (the artifact's), "device" (benchmark.onnxruntime_device).
    runner_settings: tuple[str, ...] = ()
    # "module:function" reading edgekd's metadata (strings) from an artifact; None: the artifact holds none
    # and ``metadata_note`` says where it is instead.
    metadata_reader: str | None = None
    metadata_note: str = ""
    plot_marker: str = "o"  # its points' matplotlib marker in the report's plots

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def backend(self) -> str:
        """The runtime's name, under the name callers of formats.py have always used."""
        return self.runtime

    @property
    def reads(self) -> tuple[str, ...]:
        return self.suffixes + self.also_reads

    @property
    def missing(self) -> list[str]:
        """The runtime packages that are not installed here."""
        return [package.module for package in self.runtime_packages if not package.present]

    @property
    def available(self) -> bool:
        """Whether its artifacts can run here (every runtime package is installed)."""
        return not self.missing

    @property
    def install(self) -> str:
        """How to get its runtime, for messages and `edgekd list backends`."""
        return "in the base install" if self.extra is None else f"pip install 'edgekd[{self.extra}]'"

    @property
    def exporter_class(self) -> Any:
        return load_named(self.exporter, f"backend '{self.name}' exporter")

    @property
    def runner_class(self) -> Any:
        return load_named(self.runner, f"backend '{self.name}' runner")

    def read_metadata(self, path: Path) -> dict[str, str] | None:
        """edgekd's metadata stored in an artifact of this format; None where the format holds none."""
        if self.metadata_reader is None:
            return None
        return load_named(self.metadata_reader, f"backend '{self.name}' metadata reader")(path)

    def files(self, path: Path) -> tuple[Path, ...]:
        """Everything one artifact is made of: the path (a file or a folder) and its companion files."""
        return (path, *(path.with_suffix(suffix) for suffix in self.companions))

    def artifact_exists(self, path: Path) -> bool:
        return path.is_dir() if self.directory else path.is_file()


def load_named(target: str, what: str) -> Any:
    """What ``"module:name"`` names, importing the module on first use (Python caches it)."""
    module_name, _, name = target.partition(":")
    found = getattr(importlib.import_module(module_name), name, None)
    if found is None:
        raise ImportError(f"{what}: the catalog names {target}, which does not exist; make them agree")
    return found


_EXPORTERS = "edgekd.exporters"
_RUNNERS = "edgekd.bench.runners"
_ONNX = Package("onnx", ("onnx",))
_ONNXRUNTIME = Package("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"))
_TENSORRT = Package("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"))
_LITERT = Package("ai_edge_litert", ("ai-edge-litert",))

# In export order: the FP32 ONNX comes first because the OpenVINO IRs and TensorRT engines are built from it.
CATALOG: tuple[Backend, ...] = (
    Backend(
        "onnx",
        "onnxruntime",
        PRECISIONS,
        (".onnx",),
        "ONNX with a dynamic batch; FP16 weights and arithmetic behind FP32 input and output (for ONNX "
        "Runtime's CUDA execution provider); INT8 as ONNX Runtime Q/DQ (tuned for its CPU provider)",
        exporter=f"{_EXPORTERS}.onnx_export:OnnxExporter",
        runner=f"{_RUNNERS}.onnxruntime_runner:OnnxRuntimeRunner",
        runtime_packages=(_ONNXRUNTIME,),
        export_packages=(_ONNX,),
        export_options=("opset", "calibration_method", "calibration_size"),
        runner_settings=("device",),
        metadata_reader=f"{_EXPORTERS}.onnx_export:read_metadata",
        plot_marker="o",
    ),
    Backend(
        "openvino",
        "openvino",
        PRECISIONS,
        (".xml",),
        "OpenVINO IR (.xml graph, .bin weights beside it); FP16-compressed weights, INT8 by NNCF",
        exporter=f"{_EXPORTERS}.openvino_export:OpenVinoExporter",
        runner=f"{_RUNNERS}.openvino_runner:OpenVinoRunner",
        runtime_packages=(Package("openvino", ("openvino",)),),
        export_packages=(Package("nncf", ("nncf",)),),
        companions=(".bin",),
        also_reads=(".onnx",),
        # The opset too: deployment converts the IR from the FP32 ONNX.
        export_options=("opset", "calibration_size", "int8_max_drop"),
        runner_settings=("precision",),
        metadata_reader=f"{_EXPORTERS}.openvino_export:read_metadata",
        plot_marker="D",
    ),
    Backend(
        "tensorrt",
        "tensorrt",
        PRECISIONS,
        (".engine", ".plan"),
        "TensorRT engine, built on the target GPU from the ONNX (INT8 from a Q/DQ ONNX)",
        exporter=f"{_EXPORTERS}.tensorrt_export:TensorRTExporter",
        runner=f"{_RUNNERS}.tensorrt_runner:TensorRTRunner",
        runtime_packages=(_TENSORRT,),
        export_packages=(_ONNX, _ONNXRUNTIME),
        extra="tensorrt",
        export_options=("opset", "calibration_method", "calibration_size", "max_batch", "opt_batch"),
        metadata_note="an engine holds no metadata: keep the ONNX file it was built from beside it",
        plot_marker="^",
    ),
    Backend(
        "litert",
        "litert",
        ("fp32", "int8"),
        (".tflite",),
        "LiteRT flatbuffer converted by litert-torch, NCHW input at batch 1 (resized at run time); INT8 by "
        "ai-edge-quantizer (int8 weights, activations, input and output); run on XNNPACK",
        exporter=f"{_EXPORTERS}.litert_export:LiteRtExporter",
        runner=f"{_RUNNERS}.litert_runner:LiteRtRunner",
        runtime_packages=(_LITERT,),
        export_packages=(
            Package("litert_torch", ("litert-torch",)),
            Package("ai_edge_quantizer", ("ai-edge-quantizer",)),
        ),
        extra="litert",
        # Only INT8 reads an option: how many calibration images (its recipe is fixed).
        export_options=("calibration_size",),
        runner_settings=("precision",),
        metadata_reader=f"{_EXPORTERS}.litert_export:read_metadata",
        plot_marker="v",
    ),
    Backend(
        "executorch",
        "executorch",
        ("fp32", "int8"),
        (".pte",),
        "ExecuTorch program (torch.export lowered to the XNNPACK delegate), 1..15 images per call (larger "
        "batches run in chunks); INT8 by PT2E with XNNPACK's quantizer (float input and output). Running it "
        "needs torch: ExecuTorch's Python runtime links libtorch",
        exporter=f"{_EXPORTERS}.executorch_export:ExecuTorchExporter",
        runner=f"{_RUNNERS}.executorch_runner:ExecuTorchRunner",
        # torch too: the runtime imports it and takes torch tensors, so a bench-only install cannot run a .pte.
        runtime_packages=(Package("executorch", ("executorch",)), Package("torch", ("torch",))),
        export_packages=(Package("torchao", ("torchao",)),),
        extra="executorch",
        # Only INT8 reads an option: how many calibration images (its quantizer settings are fixed).
        export_options=("calibration_size",),
        runner_settings=("precision",),
        metadata_reader=f"{_EXPORTERS}.executorch_export:read_metadata",
        plot_marker="P",
    ),
)


def by_name(entries: tuple[Backend, ...]) -> dict[str, Backend]:
    """The entries by format; a format or runtime declared twice is an error (one would hide the other)."""
    found: dict[str, Backend] = {}
    for entry in entries:
        if entry.name in found or entry.runtime in {other.runtime for other in found.values()}:
            raise ValueError(f"backend '{entry.name}' ({entry.runtime}) is declared twice in the catalog")
        found[entry.name] = entry
    return found


# The functions below read FORMATS when called (a test adds an entry to it); the names computed from it here
# (the recipe's Literals, the command line's choices) are fixed at import.
FORMATS: dict[str, Backend] = by_name(CATALOG)
# The PyTorch student itself: a latency budget may be on it (fp32 only), and the plots mark it.
PYTORCH = "pytorch"
PYTORCH_MARKER = "s"
# pydantic reads a Literal of the names, so a recipe naming another format gets the list of these.
FormatName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {name: fmt.precisions for name, fmt in FORMATS.items()}
# The runner a file's suffix implies when none is named.
BACKEND_FOR_SUFFIX: dict[str, str] = {
    suffix: fmt.runtime for fmt in FORMATS.values() for suffix in fmt.suffixes
}
BACKENDS: tuple[str, ...] = tuple(fmt.runtime for fmt in FORMATS.values())
# What a latency budget can be on: each runtime at its format's precisions, and the PyTorch student.
LATENCY_BACKENDS: dict[str, tuple[str, ...]] = {
    **{fmt.runtime: fmt.precisions for fmt in FORMATS.values()},
    PYTORCH: ("fp32",),
}
LatencyBackendName = Literal[tuple(LATENCY_BACKENDS)]  # type: ignore[valid-type]


def backend_of_runtime(runtime: str) -> Backend | None:
    """The entry whose artifacts ``runtime`` runs; None for pytorch (it runs the student itself)."""
    return next((fmt for fmt in FORMATS.values() if fmt.runtime == runtime), None)


def backend_of_suffix(suffix: str) -> Backend | None:
    """The entry whose exporter writes files of ``suffix``, if any."""
    return next((fmt for fmt in FORMATS.values() if suffix.lower() in fmt.suffixes), None)


def format_of_runtime(runtime: str) -> str | None:
    """The format whose artifacts ``runtime`` runs; None for pytorch."""
    found = backend_of_runtime(runtime)
    return None if found is None else found.name


def plot_markers() -> dict[str, str]:
    """Format (or pytorch) -> the marker of its points in the report's plots."""
    return {PYTORCH: PYTORCH_MARKER, **{name: fmt.plot_marker for name, fmt in FORMATS.items()}}


def backend_packages() -> dict[str, tuple[str, ...]]:
    """Every package an exporter or a runner needs: module -> its pip distributions."""
    packages: dict[str, tuple[str, ...]] = {}
    for fmt in FORMATS.values():
        for package in (*fmt.export_packages, *fmt.runtime_packages):
            packages.setdefault(package.module, package.distributions or (package.module,))
    return packages


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
