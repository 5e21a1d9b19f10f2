"""The one interface every backend runner follows, so the harness can time any of them the same way."""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.formats import PRECISIONS

_SOURCE_LOCATION = re.compile(r":\d+:$")
# What the latency harness times when a runner cannot bind a batch (see Runner.bind_inference).
UNBOUND_CALL = (
    "run() on the host array (this runner does not bind: input conversion and output copy included)"
)


@dataclass(frozen=True)
class BoundInference:
    """One batch bound to a runner once, so that only the inference is left to call (and to time).

    ``infer()`` runs the model on the bound batch and returns when the result is ready; what it returns is
    not meant to be used (backends return their own objects or nothing). ``logits()`` reads what the last
    ``infer()`` computed, as an N×classes array, so that a bound call can be checked against ``run()``.
    ``timed_call`` says in words what ``infer()`` does, for results files.
    """

    infer: Callable[[], object]
    logits: Callable[[], np.ndarray]
    timed_call: str


class Runner(ABC):
    """Runs a classifier on one backend: ``load()`` once, then ``run(images)`` synchronously, many times.

    ``load()`` does everything that must happen before the first inference (create the session, compile,
    deserialize) and is idempotent, so the harness can time it and later users can call it again for free.
    ``run()`` takes an N×C×H×W float32 batch and returns N×classes float32 logits; it returns only when the
    result is ready, so wall-clock time around it is the latency.
    """

    backend: str = ""
    # What the model holds (fp32, fp16, int8); None where the runner cannot know it.
    precision: str | None = None

    def __init__(self, threads: int | None = None, device: str = "cpu"):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EdgekdError(
                f"threads: got {threads!r}; allowed: a positive integer, or None for the default"
            )
        self.threads = threads
        self.device = device
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Prepare the backend for inference; a second call does nothing."""
        if not self._loaded:
            self._load()
            self._loaded = True

    @abstractmethod
    def _load(self) -> None:
        """The backend's own preparation; called once by :meth:`load`."""

    def prepare_batch(self, batch: int) -> None:
        """Get ready to run many batches of exactly ``batch`` images (the latency harness calls it before
        timing a batch size). Backends that run a fixed shape faster than a dynamic one specialize here."""
        del batch  # most backends run every batch size alike: nothing to prepare

    @abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray:
        """N×C×H×W float32 images → N×classes float32 logits; requires :meth:`load` first."""

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        """Bind ``images`` once and return the bare inference call on them (what the latency harness times).

        Backends that can, bind the input (and where they allow it the output) here, so that the call does
        no input conversion or per-call setup, as OpenVINO's benchmark_app times an InferRequest; a batch
        the model rejects is reported here, as one line. A bound call may share buffers with :meth:`run`
        (OpenVINO's request, TensorRT's device buffers): it is valid until the next ``run()`` or
        ``bind_inference()``. This default, for runners that cannot bind, calls ``run(images)``.
        """
        last: list[np.ndarray] = []

        def run_on_images() -> None:
            last[:] = [self.run(images)]

        def last_logits() -> np.ndarray:
            if not last:
                run_on_images()
            return np.asarray(last[0])

        return BoundInference(infer=run_on_images, logits=last_logits, timed_call=UNBOUND_CALL)

    def runs_on(self) -> str:
        """What ran the model, in a few words for tables: ``openvino cpu``, ``onnxruntime CUDA EP``."""
        return f"{self.backend} {self.device}"

    def describe(self) -> dict[str, Any]:
        """What this runner runs on and how it is configured; backends add their own keys."""
        return {
            "backend": self.backend,
            "device": self.device,
            "runs_on": self.runs_on(),
            "threads": self.threads,
            "precision": self.precision,
        }


def import_backend(module: str, package: str, purpose: str) -> ModuleType:
    """Import a backend module, or explain which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EdgekdError(
            f"{purpose} needs the '{package}' package, which is not installed ({err}); install it with pip"
        ) from None


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first telling line of an exception's message: backends write long multi-line messages.

    OpenVINO prefixes its messages with source locations ("Exception from src/.../core.cpp:84:"), which say
    nothing to a user, so lines ending in ``:<line number>:`` are skipped while a later line exists.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not _SOURCE_LOCATION.search(line)] or lines
    if not telling:
        return type(error).__name__
    line = telling[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def inference_failed(path: Path, batch: np.ndarray, err: BaseException, expected: Any) -> EdgekdError:
    """The one-line error of a runner whose backend rejected a batch, with the input the model expects."""
    return EdgekdError(
        f"{path}: inference on input {tuple(batch.shape)} failed ({first_line(err)}); the model expects {expected}"
    )


def as_float32_batch(images: np.ndarray) -> np.ndarray:
    """A C-contiguous, writeable float32 array (a copy only when needed) that backends can use in place.

    Writeable because OpenVINO refuses to share the memory of a read-only array (e.g. np.broadcast_to).
    """
    batch = np.ascontiguousarray(images, dtype=np.float32)
    return batch if batch.flags.writeable else batch.copy()


def check_precision(precision: str | None) -> str | None:
    """An artifact precision as edgekd names them, or None for 'not known'."""
    if precision is not None and precision not in PRECISIONS:
        raise EdgekdError(f"precision: got {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


def existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"{what}: {path} does not exist or is not a file")
    return path
