"""One runner per inference backend behind one interface, and :func:`runner_for` to pick one for a file.

Which runner runs which files, and the packages it needs, is declared in the backend catalog
(edgekd.formats); the runner class an entry names is imported when it is first picked.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from edgekd.bench.runners.base import BoundInference, Runner
from edgekd.bench.runners.onnxruntime_runner import OnnxRuntimeRunner
from edgekd.bench.runners.openvino_runner import OpenVinoRunner
from edgekd.bench.runners.tensorrt_runner import TensorRTRunner
from edgekd.bench.runners.torch_eager import TorchRunner
from edgekd.errors import EdgekdError
from edgekd.formats import BACKEND_FOR_SUFFIX, FORMATS, Backend, backend_of_runtime, backend_of_suffix

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


def runner_for(path: str | Path, backend: str | None = None, **options: Any) -> Runner:
    """The runner for an exported model (a file, or a folder where its format's artifacts are folders), by
    its suffix or by the named ``backend``.

    ``options`` go to the runner: ``threads``, ``device``, ``precision`` (what the artifact holds: fp32, fp16,
    int8), and for OpenVINO ``hint`` and ``inference_precision``. Nothing is loaded yet: call ``load()`` (the
    latency harness does, and times it); a corrupt file is reported then, as an EdgekdError.
    """
    path = Path(path)
    entry = _entry_named(path, backend) if backend is not None else backend_of_suffix(path.suffix)
    if not (entry.artifact_exists(path) if entry is not None else path.is_file()):
        raise EdgekdError(f"{path}: no such model file; allowed: an existing {_suffix_list()} file")
    if entry is None:
        entry = _entry_from_suffix(path)
    if path.suffix.lower() not in entry.reads:
        raise EdgekdError(
            f"{path}: backend {entry.runtime!r} cannot read a {path.suffix or 'suffix-less'} file; "
            f"allowed: {', '.join(entry.reads)}"
        )
    if entry.missing:
        raise EdgekdError(
            f"{path}: backend {entry.runtime!r} needs the '{entry.missing[0]}' package, which is not "
            f"installed{install_hint(entry)}"
        )
    runner_class = entry.runner_class
    _check_options(runner_class, entry.runtime, options)
    return runner_class(path, **options)


def install_hint(entry: Backend) -> str:
    """'; install it with: pip install ...' for a runtime of an optional extra; empty for the base install."""
    return "" if entry.extra is None else f"; install it with: {entry.install}"


def _entry_named(path: Path, backend: str) -> Backend:
    if backend == "pytorch":
        raise EdgekdError(f"{path}: backend 'pytorch' runs an nn.Module, not a file; use TorchRunner(model)")
    entry = backend_of_runtime(backend)
    if entry is None:
        allowed = ", ".join(fmt.runtime for fmt in FORMATS.values())
        raise EdgekdError(f"backend: got {backend!r} for {path}; allowed: {allowed}")
    return entry


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


def _entry_from_suffix(path: Path) -> Backend:
    entry = backend_of_suffix(path.suffix)
    if entry is None:
        raise EdgekdError(
            f"{path}: unknown model suffix {path.suffix.lower() or '(none)'!r}; allowed: {_suffix_list()}, "
            "or name the backend explicitly"
        )
    return entry


def _suffix_list() -> str:
    return "/".join(suffix for fmt in FORMATS.values() for suffix in fmt.suffixes)
