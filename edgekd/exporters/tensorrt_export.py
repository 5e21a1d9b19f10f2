"""TensorRT engines (.engine) built with the TensorRT Python API (>= 10) from an ONNX file.

An engine is specific to the GPU model and TensorRT version it is built with, so it must be built on the
target machine. Where TensorRT is not installed the exporter says so and gives the equivalent ``trtexec``
command line (:func:`trtexec_command`); :func:`onnx_for_tensorrt` writes the ONNX file that command reads.

FP32 and FP16 engines are built from the FP32 ONNX, FP16 with the builder's FP16 flag. INT8 is explicit
quantization: the engine is built from a Q/DQ ONNX calibrated by ONNX Runtime on the given images (the
implicit-calibration API is deprecated since TensorRT 10.1). The batch dimension stays dynamic through an
optimization profile from 1 to ``options.max_batch``, tuned for ``options.opt_batch``.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.exporters.base import (
    DEFAULT_STEM,
    Artifact,
    Exporter,
    ExportOptions,
    ExportRequest,
    ModelIO,
    TargetBuild,
    check_calibration,
    check_onnx_fp32,
    check_stem,
    files_size,
    one_line,
)
from edgekd.exporters.onnx_export import OnnxExporter, fp32_source, quantized_proto, save_onnx
from edgekd.fileio import atomic_path

if TYPE_CHECKING:
    from torch import nn

MIN_TENSORRT_MAJOR = 10
# The builder may use this much GPU scratch memory per layer; plenty for the small students edgekd builds.
_WORKSPACE_BYTES = 1 << 30


class TensorRTExporter(Exporter):
    format = "tensorrt"
    fake_quantized_gap = (
        "TensorRT's explicit quantization takes signed INT8 Q/DQ with zero points of 0, and the NNCF "
        "student's activations after a ReLU are unsigned 8-bit; not verifiable here (no TensorRT)"
    )

    def cannot_build_here(self) -> str | None:
        return None if tensorrt_available() else "needs TensorRT and a CUDA GPU"

    def prepare_for_target(
        self,
        model: nn.Module,
        io: ModelIO,
        precision: str,
        out_dir: Path,
        *,
        options: ExportOptions | None = None,
        calibration: np.ndarray | None = None,
        onnx_fp32: Artifact | None = None,
        stem: str = DEFAULT_STEM,
    ) -> TargetBuild:
        """The ONNX the engine is built from (the FP32 one, or the Q/DQ one for int8) and the trtexec command
        that builds the engine on the target."""
        options = options or ExportOptions()
        source = onnx_for_tensorrt(
            model,
            io,
            precision,
            out_dir,
            options=options,
            calibration=calibration,
            onnx_fp32=onnx_fp32,
            stem=stem,
        )
        engine_path = Path(out_dir) / f"{stem}_{self.format}_{precision}{self.suffix}"
        command = trtexec_command(source.path, engine_path, precision, io, options)
        return TargetBuild(source, self.cannot_build_here() or "built elsewhere", "trtexec", command)

    def _export(self, request: ExportRequest) -> Artifact:
        path = self.artifact_path(request)
        trt = import_tensorrt(trtexec_for(request, path))
        details: dict[str, Any] = {"tensorrt_version": trt.__version__, "warnings": []}
        with tempfile.TemporaryDirectory(prefix="edgekd-tensorrt-") as work_dir:
            onnx_path, source = _onnx_source(request, Path(work_dir))
            details.update(source)
            engine = build_engine(trt, onnx_path, request.io, request.precision, request.options, details)
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            stream.write(engine)
        return Artifact(path, self.format, request.precision, request.io, files_size([path]), details)


def tensorrt_available() -> bool:
    """Whether engines can be built here: TensorRT installed and a CUDA GPU that torch sees."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


def import_tensorrt(trtexec: str) -> Any:
    """The ``tensorrt`` module (>= 10), or an EdgekdError that tells how to build the engine on the target."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as error:  # OSError: the package is there but its CUDA libraries are not
        missing = isinstance(error, ModuleNotFoundError) and error.name == "tensorrt"
        state = "not installed" if missing else "installed but cannot be loaded"
        raise EdgekdError(
            f"tensorrt: TensorRT is {state} here ({one_line(error, 80)}); engines must be built on the "
            f"target GPU they run on: install TensorRT there and run: {trtexec}"
        ) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise EdgekdError(
            f"tensorrt: TensorRT {trt.__version__} is not supported; allowed: >= {MIN_TENSORRT_MAJOR}.0 "
            f"(or build on the target with: {trtexec})"
        )
    return trt


def build_engine(
    trt: Any, onnx_path: Path, io: ModelIO, precision: str, options: ExportOptions, details: dict[str, Any]
) -> Any:
    """Parse ``onnx_path``, build a serialized engine for ``precision`` and return it (a buffer)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _create_builder(trt, logger)
    # TensorRT 11 removed the precision flags: there a Q/DQ network is built strongly typed instead.
    strongly_typed = precision == "int8" and not hasattr(trt.BuilderFlag, "INT8")
    # Networks are always explicit-batch in TensorRT 10 (flags=0); the EXPLICIT_BATCH flag is deprecated.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(index)) for index in range(parser.num_errors)]
        raise EdgekdError(
            f"tensorrt: parsing the ONNX model failed: {errors[0] if errors else 'no reason given'}"
        )
    _check_network_io(network, io)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    profile.set_shape(io.input_name, *profile_shapes(io, options))
    config.add_optimization_profile(profile)
    details["build_flags"] = _set_precision(trt, config, precision, strongly_typed)
    details["profile"] = {"min": 1, "opt": options.opt_batch, "max": options.max_batch}
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgekdError(
            f"tensorrt: building the {precision} engine failed; TensorRT's messages above say why"
        )
    return engine


def _create_builder(trt: Any, logger: Any) -> Any:
    try:
        builder = trt.Builder(logger)
    except Exception as error:  # TensorRT raises when it finds no usable CUDA device
        builder, reason = None, one_line(error, 160)
    else:
        reason = "no builder returned"
    if builder is None:
        raise EdgekdError(
            f"tensorrt: cannot create a TensorRT builder ({reason}); a CUDA GPU and driver are required, and "
            "engines must be built on the target GPU they run on"
        )
    return builder


def _set_precision(trt: Any, config: Any, precision: str, strongly_typed: bool) -> list[str]:
    if precision == "fp32" or strongly_typed:
        return ["STRONGLY_TYPED"] if strongly_typed else []
    # FP16: layers may run in half precision. INT8: the Q/DQ layers run in int8 (explicit quantization).
    name = precision.upper()
    if not hasattr(trt.BuilderFlag, name):
        raise EdgekdError(
            f"precision: {precision!r} needs the {name} builder flag, which TensorRT {trt.__version__} does "
            "not have (removed in TensorRT 11); build it with TensorRT 10, or use fp32 or int8"
        )
    config.set_flag(getattr(trt.BuilderFlag, name))
    return [name]


def _parser_error(error: Any) -> str:
    text = error.desc() if hasattr(error, "desc") else str(error)
    return " ".join(str(text).split())


def _check_network_io(network: Any, io: ModelIO) -> None:
    inputs = [network.get_input(index).name for index in range(network.num_inputs)]
    outputs = [network.get_output(index).name for index in range(network.num_outputs)]
    if inputs != [io.input_name] or outputs != [io.output_name]:
        raise EdgekdError(
            f"tensorrt: the network has inputs {inputs} and outputs {outputs}; allowed: one input "
            f"{io.input_name!r} and one output {io.output_name!r}"
        )


def profile_shapes(
    io: ModelIO, options: ExportOptions
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the dynamic-batch optimization profile."""
    return io.batch_shape(1), io.batch_shape(options.opt_batch), io.batch_shape(options.max_batch)


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    io: ModelIO,
    options: ExportOptions | None = None,
) -> str:
    """The ``trtexec`` command line that builds the same engine as the exporter, for running on the target.

    ``onnx_path`` is the FP32 ONNX for fp32 and fp16, and the Q/DQ ONNX (see :func:`onnx_for_tensorrt`)
    for int8: ``--int8`` lets TensorRT 10 run its Q/DQ layers in int8.
    """
    TensorRTExporter().check_precision(precision)
    options = options or ExportOptions()
    minimum, optimum, maximum = (
        f"{io.input_name}:{'x'.join(str(size) for size in shape)}" for shape in profile_shapes(io, options)
    )
    parts = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={minimum}",
        f"--optShapes={optimum}",
        f"--maxShapes={maximum}",
    ]
    if precision != "fp32":
        parts.append(f"--{precision}")
    return shlex.join(parts)


def tensorrt_onnx_path(out_dir: str | Path, stem: str, precision: str) -> Path:
    """Where :func:`onnx_for_tensorrt` writes the ONNX file a ``precision`` engine is built from."""
    name = f"{stem}_tensorrt_int8.onnx" if precision == "int8" else f"{stem}_onnx_fp32.onnx"
    return Path(out_dir) / name


def trtexec_for(request: ExportRequest, engine_path: Path) -> str:
    if request.precision != "int8" and request.onnx_fp32 is not None:
        onnx_path = request.onnx_fp32.path
    else:
        onnx_path = tensorrt_onnx_path(request.out_dir, request.stem, request.precision)
    return trtexec_command(onnx_path, engine_path, request.precision, request.io, request.options)


def onnx_for_tensorrt(
    model: nn.Module,
    io: ModelIO,
    precision: str,
    out_dir: str | Path,
    *,
    options: ExportOptions | None = None,
    calibration: np.ndarray | None = None,
    onnx_fp32: Artifact | None = None,
    stem: str = DEFAULT_STEM,
) -> Artifact:
    """Write the ONNX file a TensorRT ``precision`` engine is built from, for building on the target.

    fp32/fp16: the FP32 ONNX (``onnx_fp32`` itself when given, else ``<stem>_onnx_fp32.onnx``). int8: a Q/DQ
    ONNX in the flavour TensorRT accepts (int8 symmetric activations, float biases), calibrated on
    ``calibration``, written to ``<stem>_tensorrt_int8.onnx``. Pass the returned path to :func:`trtexec_command`.
    """
    TensorRTExporter().check_precision(precision)
    options = options or ExportOptions()
    if precision != "int8":
        if onnx_fp32 is None:
            return OnnxExporter().export(model, io, "fp32", out_dir, options=options, stem=stem)
        check_onnx_fp32(onnx_fp32, io)
        return onnx_fp32
    request = ExportRequest(
        model=model,
        io=io,
        precision=precision,
        out_dir=Path(out_dir),
        stem=check_stem(stem),
        options=options,
        calibration=check_calibration(calibration, io, options, precision, "tensorrt"),
        validation=None,
        onnx_fp32=check_onnx_fp32(onnx_fp32, io),
    )
    request.out_dir.mkdir(parents=True, exist_ok=True)
    proto, details = quantized_proto(request, target="tensorrt")
    path = tensorrt_onnx_path(request.out_dir, request.stem, precision)
    save_onnx(proto, path, io, precision, details)
    return Artifact(path, "onnx", precision, io, files_size([path]), details)


def _onnx_source(request: ExportRequest, work: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX file to build from, inside ``work`` unless ``onnx_fp32`` is used as it is."""
    import onnx

    if request.precision != "int8":
        path, details = fp32_source(request, work)
        return path, {"onnx_source": details.pop("source"), **details}
    proto, details = quantized_proto(request, target="tensorrt")
    path = work / "int8_qdq.onnx"
    onnx.save_model(proto, str(path))
    return path, {"onnx_source": "Q/DQ ONNX (onnxruntime static quantization)", **details}
