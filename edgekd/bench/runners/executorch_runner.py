"""ExecuTorch: a .pte's ``forward`` method in ExecuTorch's Python runtime, on the CPU through XNNPACK.

The runtime takes and returns torch tensors and links libtorch: running a .pte needs torch (the
``executorch`` extra brings the train stack). edgekd's .pte files take 1..N images per call, N read from the
file (15, see edgekd.exporters.executorch_export); a larger batch runs as consecutive calls of at most N.

Threads: XNNPACK's threadpool is one per process, and resizing it after a delegated method was loaded
crashed the process (executorch 1.5.1). So ``threads`` is applied once, before the first ``forward`` of the
process loads; a later runner asking for another count is refused rather than silently run on the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench.runners.base import (
    BoundInference,
    Runner,
    as_float32_batch,
    check_precision,
    existing_file,
    first_line,
    inference_failed,
)
from edgekd.errors import EdgekdError
from edgekd.formats import PRECISIONS

BOUND_CALL = (
    "bound infer: Method.execute() on a torch tensor made once from the batch (one call per chunk of at "
    "most the file's batch bound)"
)


@dataclass
class _Threadpool:
    """What this process did to XNNPACK's threadpool: the size set (None: left at the default) and whether
    a forward method was loaded since, after which it must not change."""

    threads: int | None = None
    frozen: bool = False


_POOL = _Threadpool()


def use_threads(threads: int | None) -> int | None:
    """Size XNNPACK's threadpool before the first forward method loads; returns the size in use (None: the
    runtime's default, one thread per core)."""
    if threads is None or threads == _POOL.threads:
        return _POOL.threads
    if _POOL.frozen:
        now = "the runtime's default" if _POOL.threads is None else f"{_POOL.threads}"
        raise EdgekdError(
            f"executorch: threads={threads} cannot be applied: this process already runs ExecuTorch with "
            f"{now} threads, and the threadpool cannot be resized after a model loaded (it crashes); "
            "run it in a new process, or with the same threads"
        )
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    _POOL.threads = threads
    return threads


class ExecuTorchRunner(Runner):
    """The ``forward`` method of one .pte; ``precision`` is only reported (read from the file's metadata
    when not given)."""

    backend = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None):
        super().__init__(threads=threads, device="cpu")
        self.path = existing_file(path, "ExecuTorch program")
        self.precision = check_precision(precision)
        self._method: Any = None
        self.max_batch = 0
        self._threads_in_use: int | None = None

    def _load(self) -> None:
        from edgekd.exporters.executorch_export import METADATA_METHOD, load_program, read_metadata

        program = load_program(self.path)
        if "forward" not in program.method_names:
            raise EdgekdError(f"{self.path}: the program has no forward method; allowed: a .pte edgekd wrote")
        if self.precision is None and METADATA_METHOD in program.method_names:
            written = read_metadata(self.path).get("precision")
            self.precision = written if written in PRECISIONS else None
        self._threads_in_use = use_threads(self.threads)
        try:
            method = program.load_method("forward")
        except (RuntimeError, ValueError) as err:
            raise EdgekdError(f"{self.path}: ExecuTorch cannot load forward ({first_line(err)})") from None
        finally:
            _POOL.frozen = True
        self._check_signature(method.metadata)
        self._method = method

    def _check_signature(self, meta: Any) -> None:
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise EdgekdError(
                f"{self.path}: forward takes {meta.num_inputs()} inputs and gives {meta.num_outputs()} "
                "outputs; allowed: one image batch in, one logits batch out"
            )
        # A dynamic dimension reports its upper bound: the most images one call takes.
        sizes = tuple(meta.input_tensor_meta(0).sizes())
        self.max_batch, self._image_shape = int(sizes[0]), sizes[1:]

    def run(self, images: np.ndarray) -> np.ndarray:
        chunks = self._chunks(images)
        return np.concatenate([self._execute(chunk).numpy().copy() for chunk in chunks])

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        chunks = self._chunks(images)
        outputs: list[Any] = [self._execute(chunk) for chunk in chunks]  # a rejected batch fails here

        def infer() -> None:
            outputs[:] = [self._method.execute([chunk])[0] for chunk in chunks]

        def logits() -> np.ndarray:
            return np.concatenate([output.numpy().copy() for output in outputs])

        return BoundInference(infer=infer, logits=logits, timed_call=BOUND_CALL)

    def _chunks(self, images: np.ndarray) -> list[Any]:
        """The batch as torch tensors of at most ``max_batch`` images (sharing the array's memory)."""
        import torch

        if self._method is None:
            raise EdgekdError(f"{self.path}: call load() before run()")
        batch = as_float32_batch(images)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self._image_shape) or not len(batch):
            raise inference_failed(self.path, batch, ValueError("wrong image shape"), self._expected())
        tensor = torch.from_numpy(batch)
        return list(torch.split(tensor, self.max_batch))

    def _execute(self, chunk: Any) -> Any:
        try:
            return self._method.execute([chunk])[0]
        except (RuntimeError, ValueError) as err:
            raise inference_failed(self.path, chunk.numpy(), err, self._expected()) from None

    def _expected(self) -> str:
        return f"N×{'×'.join(str(s) for s in self._image_shape)} float32, up to {self.max_batch} per call"

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        from importlib.metadata import version

        info.update(
            version=version("executorch"),
            path=str(self.path),
            delegate="XNNPACK",
            threads=self._threads_in_use or self.threads or "ExecuTorch default (one per core)",
            max_batch_per_call=self.max_batch or None,
        )
        return info
