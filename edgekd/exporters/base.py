"""One interface for every deployment format: what a model is fed, what an export produces, and how to get an
exporter.

An :class:`Exporter` turns a trained PyTorch classifier into a file a runtime loads (ONNX, OpenVINO IR, a
TensorRT engine) at one precision; :func:`get_exporter` finds it through the backend catalog
(edgekd.formats). The checks every format shares (precision allowed, calibration data present and shaped
like the model input, an output name that cannot escape ``out_dir``) live here, so each backend module only
converts and writes.

Heavy backends (onnxruntime, openvino, nncf, tensorrt) are imported inside the functions that use them:
``import edgekd.exporters`` stays cheap and works where a backend is missing.
"""

from __future__ import annotations

import contextlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.formats import FORMATS, Backend

if TYPE_CHECKING:
    import torch
    from torch import nn

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_STEM = "student"
_STEM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Both the torch.export-based and the TorchScript ONNX exporters handle these opsets; older ones miss ops
# (e.g. ReduceMean with axes as an input) that the exported graphs use.
MIN_OPSET = 13


@dataclass(frozen=True)
class ModelIO:
    """What a deployed model is fed and what its output means; stored in every artifact's metadata.

    The input is an N×C×H×W float32 batch that is already normalized with ``mean`` and ``std`` (one value
    per channel); the output is N×K logits, one per entry of ``class_names``.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    input_name: str = "images"
    output_name: str = "logits"

    def __post_init__(self) -> None:
        for name in ("channels", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EdgekdError(f"model io {name}: {value!r} is not allowed; give a whole number >= 1")
        # Lists from YAML/JSON become tuples so that the dataclass stays hashable and compares equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(str(v) for v in self.class_names))
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise EdgekdError(
                    f"model io {name}: {list(values)} has {len(values)} values; give one per channel "
                    f"({self.channels})"
                )
        if any(not v > 0 for v in self.std):
            raise EdgekdError(f"model io std: {list(self.std)} is not allowed; every value must be > 0")
        if not self.class_names:
            raise EdgekdError("model io class_names: () is not allowed; give at least one class name")
        if not self.input_name or not self.output_name or self.input_name == self.output_name:
            raise EdgekdError(
                f"model io names: input {self.input_name!r} and output {self.output_name!r} are not allowed; "
                "give two different non-empty names"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def batch_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("mean", "std", "class_names"):
            data[key] = list(data[key])
        return data

    def metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` and OpenVINO ``rt_info`` (both hold strings)."""
        from edgekd import __version__

        return {
            "class_names": json.dumps(list(self.class_names)),
            "input_shape": json.dumps(["N", *self.image_shape]),
            "layout": "NCHW",
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "edgekd_version": __version__,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "artifact") -> ModelIO:
        """Rebuild the io description from :meth:`metadata` as read back from the artifact `source`."""
        missing = [key for key in ("input_shape", "mean", "std", "class_names") if key not in metadata]
        if missing:
            raise EdgekdError(
                f"{source}: carries no edgekd metadata ({', '.join(missing)} missing): it was not written by "
                "edgekd export"
            )
        try:
            _, channels, height, width = json.loads(metadata["input_shape"])
            return cls(
                channels=channels,
                height=height,
                width=width,
                mean=tuple(json.loads(metadata["mean"])),
                std=tuple(json.loads(metadata["std"])),
                class_names=tuple(json.loads(metadata["class_names"])),
                input_name=metadata.get("input_name", "images"),
                output_name=metadata.get("output_name", "logits"),
            )
        except (ValueError, TypeError) as error:
            raise EdgekdError(
                f"{source}: its edgekd metadata is malformed ({one_line(error)}); was it edited after export?"
            ) from None


@dataclass(frozen=True)
class Artifact:
    """One exported model: a file or a folder, as its catalog entry says (OpenVINO: the .xml, its .bin beside)."""

    path: Path
    format: str
    precision: str
    io: ModelIO
    size_bytes: int
    details: dict[str, Any] = field(default_factory=dict)  # exporter, opset, quantization settings, warnings

    @property
    def files(self) -> tuple[Path, ...]:
        """Every path that makes up the artifact (the .xml and .bin for OpenVINO), as its entry declares."""
        return FORMATS[self.format].files(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "precision": self.precision,
            "io": self.io.to_dict(),
            "size_bytes": self.size_bytes,
            "details": _jsonable(self.details),
        }


@dataclass(frozen=True)
class ExportOptions:
    """Settings shared by the exporters; each uses the ones that apply to it.

    ``max_batch`` and ``opt_batch`` bound and tune TensorRT's dynamic-batch profile; ``calibration_size``
    caps how many calibration images INT8 quantization reads (the first ones given);
    ``calibration_method`` picks the ONNX Runtime calibrator; ``int8_max_drop`` turns on NNCF's
    accuracy-controlled quantization for OpenVINO INT8 (an absolute top-1 fraction: 0.01 = 1 point).
    """

    opset: int = 18
    max_batch: int = 64
    opt_batch: int = 1
    calibration_size: int = 300
    calibration_method: str = "minmax"
    int8_max_drop: float | None = None

    def __post_init__(self) -> None:
        _require_int("opset", self.opset, minimum=MIN_OPSET)
        _require_int("max_batch", self.max_batch, minimum=1)
        _require_int("opt_batch", self.opt_batch, minimum=1)
        if self.opt_batch > self.max_batch:
            raise EdgekdError(
                f"export option opt_batch: {self.opt_batch} is not allowed; it must be <= max_batch ({self.max_batch})"
            )
        _require_int("calibration_size", self.calibration_size, minimum=1)
        if self.calibration_method not in CALIBRATION_METHODS:
            raise EdgekdError(
                f"export option calibration_method: {self.calibration_method!r} is not allowed; "
                f"allowed: {', '.join(CALIBRATION_METHODS)}"
            )
        drop = self.int8_max_drop
        if drop is not None and (
            isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 < drop < 1
        ):
            raise EdgekdError(
                f"export option int8_max_drop: {drop!r} is not allowed; give an absolute top-1 accuracy "
                "fraction in (0, 1), e.g. 0.01 for one point, or leave it unset"
            )


@dataclass(frozen=True)
class ExportRequest:
    """Everything one export needs, checked by :meth:`Exporter.export` before a backend sees it."""

    model: nn.Module
    io: ModelIO
    precision: str
    out_dir: Path
    stem: str
    options: ExportOptions
    calibration: np.ndarray | None
    validation: tuple[np.ndarray, np.ndarray] | None
    onnx_fp32: Artifact | None
    # The quantization-aware student (NNCF fake quantizers, edgekd.int8): an INT8 export writes its
    # quantizers as they are instead of calibrating the FP32 model (exporters with `exports_fake_quantized`).
    fake_quantized: nn.Module | None = None


class Exporter(ABC):
    """Turns a PyTorch classifier into one deployment format at one of its precisions."""

    format: ClassVar[str]
    # Set from edgekd.formats when a subclass is defined: what a format writes is declared there, once.
    precisions: ClassVar[tuple[str, ...]]
    suffix: ClassVar[str]
    # Whether an INT8 export can take the quantization-aware student's own quantizers (edgekd.int8); where
    # it cannot, `fake_quantized_gap` says why, and its INT8 stays post-training quantization.
    exports_fake_quantized: ClassVar[bool] = False
    fake_quantized_gap: ClassVar[str] = "its exporter has no path from NNCF's quantized PyTorch model"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = FORMATS[cls.format]
        cls.precisions = declared.precisions
        cls.suffix = declared.suffix

    @property
    def entry(self) -> Backend:
        return FORMATS[self.format]

    def cannot_build_here(self) -> str | None:
        """Why this machine cannot write the format's artifacts (TensorRT builds only on its target GPU), or
        None. Deployment then calls :meth:`prepare_for_target` instead of :meth:`export`."""
        return None

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
        """Where :meth:`cannot_build_here` gives a reason: write what the target builds the artifact from
        and the command that builds it there (the arguments are :meth:`export`'s)."""
        raise EdgekdError(f"{self.format}: has no build on the target; export it here")

    def export(
        self,
        model: nn.Module,
        io: ModelIO,
        precision: str,
        out_dir: Path,
        *,
        options: ExportOptions | None = None,
        calibration: np.ndarray | None = None,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        onnx_fp32: Artifact | None = None,
        stem: str = DEFAULT_STEM,
        fake_quantized: nn.Module | None = None,
    ) -> Artifact:
        """Write ``<out_dir>/<stem>_<format>_<precision><suffix>`` and describe it.

        ``calibration`` (N×C×H×W float32, normalized training images) is required for int8;
        ``validation`` (images, labels) is used by accuracy-controlled INT8 where a format has it;
        ``onnx_fp32`` is an FP32 ONNX artifact of the same model to convert from instead of re-exporting;
        ``fake_quantized`` is the quantization-aware student whose quantizers an INT8 export writes.
        The caller's model is left as it was (training mode and device); a failed export leaves no file.
        """
        self.check_precision(precision)
        self.check_fake_quantized(fake_quantized, precision)
        options = options or ExportOptions()
        request = ExportRequest(
            model=model,
            io=io,
            precision=precision,
            out_dir=Path(out_dir),
            stem=check_stem(stem),
            options=options,
            calibration=check_calibration(calibration, io, options, precision, self.format),
            validation=check_validation(validation, io),
            onnx_fp32=check_onnx_fp32(onnx_fp32, io),
            fake_quantized=fake_quantized,
        )
        request.out_dir.mkdir(parents=True, exist_ok=True)
        return self._export(request)

    @abstractmethod
    def _export(self, request: ExportRequest) -> Artifact:
        """Convert and write the artifact; inputs are already checked."""

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise EdgekdError(
                f"precision: {precision!r} is not supported by the {self.format} exporter; "
                f"allowed: {', '.join(self.precisions)}{self.precision_hint(precision)}"
            )

    def check_fake_quantized(self, fake_quantized: nn.Module | None, precision: str) -> None:
        if fake_quantized is None:
            return
        if precision != "int8" or not self.exports_fake_quantized:
            raise EdgekdError(
                f"fake_quantized: given for {self.format} {precision}; only an INT8 export of a format that "
                f"takes it uses a quantization-aware student ({self.format}: "
                f"{'yes' if self.exports_fake_quantized else self.fake_quantized_gap})"
            )

    def precision_hint(self, precision: str) -> str:
        """Extra words for an unsupported precision (e.g. where to get it instead); empty by default."""
        return ""

    def artifact_path(self, request: ExportRequest) -> Path:
        return request.out_dir / f"{request.stem}_{self.format}_{request.precision}{self.suffix}"


@dataclass(frozen=True)
class TargetBuild:
    """What deployment writes where an artifact cannot be built here: the file the target builds it from
    (``source``; an FP32 ONNX serves the next exports too), how (``command``) and why not here (``reason``)."""

    source: Artifact
    reason: str  # "needs TensorRT and a CUDA GPU"
    tool: str  # what the command runs: "trtexec"
    command: str


def export_formats() -> tuple[str, ...]:
    return tuple(FORMATS)


def get_exporter(format: str) -> Exporter:
    """The exporter of ``format``, the class its catalog entry names (its module is imported now)."""
    if not isinstance(format, str) or format not in FORMATS:
        raise EdgekdError(
            f"format: {format!r} is not an export format; allowed: {', '.join(export_formats())}"
        )
    exporter_class = FORMATS[format].exporter_class
    if getattr(exporter_class, "format", None) != format:
        raise ImportError(
            f"backend '{format}': the catalog's exporter {exporter_class} writes another format"
        )
    return exporter_class()


def check_stem(stem: str) -> str:
    # The stem becomes part of a file name in out_dir: no separators, no leading dot (hidden/temporary files).
    if not isinstance(stem, str) or not _STEM_PATTERN.fullmatch(stem):
        raise EdgekdError(
            f"artifact stem: {stem!r} is not allowed; use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return stem


def check_calibration(
    calibration: np.ndarray | None, io: ModelIO, options: ExportOptions, precision: str, format: str
) -> np.ndarray | None:
    """The calibration images INT8 reads (at most ``options.calibration_size``), or None for float precisions."""
    if precision != "int8":
        return None
    if calibration is None:
        raise EdgekdError(
            f"calibration: none given; {format} int8 needs calibration images (an N×C×H×W float32 array "
            "of normalized training images, N >= 1)"
        )
    images = check_images("calibration", calibration, io)
    return images[: options.calibration_size]


def check_validation(
    validation: tuple[np.ndarray, np.ndarray] | None, io: ModelIO
) -> tuple[np.ndarray, np.ndarray] | None:
    if validation is None:
        return None
    try:
        images, labels = validation
    except (TypeError, ValueError):
        raise EdgekdError(
            f"validation: a {type(validation).__name__} is not allowed; give a pair (images, labels)"
        ) from None
    images = check_images("validation images", images, io)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise EdgekdError(
            f"validation labels: shape {labels.shape} dtype {labels.dtype} is not allowed; "
            f"give {len(images)} integer class indices"
        )
    if labels.min() < 0 or labels.max() >= io.num_classes:
        raise EdgekdError(
            f"validation labels: values {labels.min()}..{labels.max()} are not allowed; "
            f"class indices run 0..{io.num_classes - 1}"
        )
    return images, labels.astype(np.int64)


def check_images(what: str, images: Any, io: ModelIO) -> np.ndarray:
    """A contiguous float32 N×C×H×W copy of ``images`` whose C×H×W matches the model input."""
    if not isinstance(images, np.ndarray):
        raise EdgekdError(f"{what}: a {type(images).__name__} is not allowed; give a numpy array N×C×H×W")
    if images.ndim != 4 or images.shape[1:] != io.image_shape or len(images) == 0:
        raise EdgekdError(
            f"{what}: shape {images.shape} is not allowed; the model takes N×{io.channels}×{io.height}×{io.width}"
            " with N >= 1"
        )
    if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise EdgekdError(
            f"{what}: dtype {images.dtype} or non-finite values are not allowed; give finite floats"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def check_onnx_fp32(artifact: Artifact | None, io: ModelIO) -> Artifact | None:
    if artifact is None:
        return None
    if not isinstance(artifact, Artifact) or (artifact.format, artifact.precision) != ("onnx", "fp32"):
        described = (
            f"{artifact.format} {artifact.precision}" if isinstance(artifact, Artifact) else repr(artifact)
        )
        raise EdgekdError(
            f"onnx_fp32: {described} is not allowed; give the onnx fp32 artifact of the same model"
        )
    if artifact.io != io:
        raise EdgekdError(
            f"onnx_fp32: '{artifact.path}' was exported for different model io; export it again"
        )
    if not artifact.path.is_file():
        raise EdgekdError(f"onnx_fp32: '{artifact.path}' does not exist")
    check_onnx_file("onnx_fp32", artifact.path, io)
    return artifact


def check_onnx_file(what: str, path: Path, io: ModelIO) -> None:
    """EdgekdError unless ``path`` is a valid ONNX model with io's one input and one output.

    Checked before any conversion starts, so that a truncated or foreign file is reported as such rather
    than as a converter's internal error.
    """
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as error:
        raise EdgekdError(
            f"{what}: '{path}' is not a valid ONNX model ({one_line(error, 160)}); give a file the onnx "
            "exporter wrote"
        ) from None
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [io.input_name] or outputs != [io.output_name]:
        raise EdgekdError(
            f"{what}: '{path}' has inputs {inputs} and outputs {outputs}; allowed: one input "
            f"{io.input_name!r} and one output {io.output_name!r}"
        )


@contextlib.contextmanager
def eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode on the CPU for an export, then restore each module's mode and the device."""
    modes = [(module, module.training) for module in model.modules()]
    device = _model_device(model)
    model.eval()
    moved = device is not None and device.type != "cpu"
    if moved:
        model.to("cpu")
    try:
        yield model
    finally:
        if moved:
            model.to(device)
        for module, training in modes:
            module.training = training


def example_batch(io: ModelIO, batch: int = 2) -> torch.Tensor:
    """A fixed random input batch; batch 2 because tracing a batch of 1 can pin the batch dimension to 1."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn(io.batch_shape(batch), generator=generator)


def files_size(paths: tuple[Path, ...] | list[Path]) -> int:
    """The bytes of the files, counting every file inside a folder (a directory-shaped artifact)."""
    return sum(_bytes_of(Path(path)) for path in paths)


def _bytes_of(path: Path) -> int:
    if path.is_dir():
        return sum(inner.stat().st_size for inner in path.rglob("*") if inner.is_file())
    return path.stat().st_size


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception message without terminal colour codes, for a one-line EdgekdError."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return None


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EdgekdError(f"export option {name}: {value!r} is not allowed; give a whole number >= {minimum}")


def _jsonable(value: Any) -> Any:
    """details may hold paths, tuples and numpy scalars; make them plain JSON types."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
