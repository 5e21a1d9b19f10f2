"""One runner per inference backend behind one interface, and :func:`runner_for` to pick one for a file."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from edgekd.bench.runners.base import BoundInference, Runner
from edgekd.bench.runners.onnxruntime_runner import OnnxRuntimeRunner
from edgekd.bench.runners.openvino_runner import OpenVinoRunner
from edgekd.bench.runners.tensorrt_runner import TensorRTRunner
from edgekd.bench.runners.torch_eager import TorchRunner
from edgekd.errors import EdgekdError
from edgekd.formats import BACKEND_FOR_SUFFIX, FORMATS

__all__ = [
    "BACKEND_FOR_SUFFIX",
    "BoundInference",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "Runner",
    "TensorRTRunner",
    "TorchRunner",
    "runner_for",
]

# For each file backend (edgekd.formats names the one each format's files run on): its runner, the pip
# package it needs, and the suffixes it reads beyond its own formats' (OpenVINO reads ONNX too, which lets
# the same .onnx be compared on both).
_FILE_BACKENDS: dict[str, tuple[type[Runner], str, tuple[str, ...]]] = {
    "onnxruntime": (OnnxRuntimeRunner, "onnxruntime", ()),
    "openvino": (OpenVinoRunner, "openvino", FORMATS["onnx"].suffixes),
    "tensorrt": (TensorRTRunner, "tensorrt", ()),
}


def runner_for(path: str | Path, backend: str | None = None, **options: Any) -> Runner:
    """The runner for an exported model file, by its suffix or by the named ``backend``.

    ``options`` go to the runner: ``threads``, ``device``, ``precision`` (what the artifact holds: fp32, fp16,
    int8), and for OpenVINO ``hint`` and ``inference_precision``. Nothing is loaded yet: call ``load()`` (the
    latency harness does, and times it); a corrupt file is reported then, as an EdgekdError.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"{path}: no such model file; allowed: an existing {_suffix_list()} file")
    backend = backend if backend is not None else _backend_from_suffix(path)
    if backend == "pytorch":
        raise EdgekdError(f"{path}: backend 'pytorch' runs an nn.Module, not a file; use TorchRunner(model)")
    if backend not in _FILE_BACKENDS:
        raise EdgekdError(f"backend: got {backend!r} for {path}; allowed: {', '.join(_FILE_BACKENDS)}")
    runner_class, package, also_reads = _FILE_BACKENDS[backend]
    suffixes = _own_suffixes(backend) + also_reads
    if path.suffix.lower() not in suffixes:
        raise EdgekdError(
            f"{path}: backend {backend!r} cannot read a {path.suffix or 'suffix-less'} file; "
            f"allowed: {', '.join(suffixes)}"
        )
    # find_spec tells whether the package is installed without paying for importing it.
    if importlib.util.find_spec(package) is None:
        raise EdgekdError(
            f"{path}: backend {backend!r} needs the '{package}' package, which is not installed"
        )
    _check_options(runner_class, backend, options)
    return runner_class(path, **options)


def _check_options(runner_class: type[Runner], backend: str, options: dict[str, Any]) -> None:
    """A misspelt option is a user error with the allowed names, not a TypeError from a constructor."""
    accepted = [
        name for name in inspect.signature(runner_class.__init__).parameters if name not in ("self", "path")
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EdgekdError(
            f"runner options: {', '.join(unknown)} not accepted by backend {backend!r}; allowed: {', '.join(accepted)}"
        )


def _own_suffixes(backend: str) -> tuple[str, ...]:
    return tuple(suffix for suffix, runs_it in BACKEND_FOR_SUFFIX.items() if runs_it == backend)


def _backend_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in BACKEND_FOR_SUFFIX:
        raise EdgekdError(
            f"{path}: unknown model suffix {suffix or '(none)'!r}; allowed: {_suffix_list()}, "
            "or name the backend explicitly"
        )
    return BACKEND_FOR_SUFFIX[suffix]


def _suffix_list() -> str:
    return "/".join(BACKEND_FOR_SUFFIX)
