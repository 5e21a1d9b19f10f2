"""PyTorch eager mode: the reference every exported artifact is compared against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.bench.runners.base import BoundInference, Runner, as_float32_batch, first_line, import_backend
from edgekd.errors import EdgekdError

if TYPE_CHECKING:
    from torch import nn

# What the latency harness times (bind_inference), in the words results files record.
BOUND_CALL = (
    "bound infer: the model under inference_mode on a tensor converted and placed on the device once "
    "(no conversion or output copy; CUDA synchronized before returning)"
)


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    ``load()`` moves the model to ``device`` and switches it to eval mode in place (no copy, so a large
    teacher is not duplicated). ``threads`` sets ``torch.set_num_threads``, which is process-wide: ``run``
    and ``bind_inference`` set it again when something else changed it since, so that the recorded thread
    count stays true.
    """

    backend = "pytorch"
    precision = "fp32"

    def __init__(self, model: nn.Module, threads: int | None = None, device: str = "cpu"):
        super().__init__(threads=threads, device=device)
        self.model = model
        self._torch: Any = None

    def _load(self) -> None:
        torch = import_backend("torch", "torch", "the PyTorch runner")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise EdgekdError(
                f"device: got {self.device!r}; allowed: 'cpu', 'cuda' or 'cuda:<index>'"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EdgekdError(f"device: got {self.device!r}, but PyTorch sees no CUDA GPU; use 'cpu'")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model.to(device).eval()
        self._torch = torch
        self._device = device

    def run(self, images: np.ndarray) -> np.ndarray:
        torch = self._loaded_torch("run()")
        self._keep_thread_count()
        with torch.inference_mode():
            batch = torch.from_numpy(as_float32_batch(images)).to(self._device)
            logits = self.model(batch)
            # .cpu() waits for a CUDA device, so the call stays synchronous.
            return logits.float().cpu().numpy()

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        torch = self._loaded_torch("bind_inference()")
        self._keep_thread_count()
        batch = as_float32_batch(images)
        tensor = torch.from_numpy(batch).to(self._device)
        on_cuda = self._device.type == "cuda"
        last: list[Any] = []

        def infer() -> None:
            with torch.inference_mode():
                last[:] = [self.model(tensor)]
            if on_cuda:
                torch.cuda.synchronize(self._device)  # CUDA kernels run asynchronously: wait for the logits

        try:
            infer()  # a batch the model rejects is reported now, not inside a timed loop
        except RuntimeError as err:
            raise EdgekdError(
                f"PyTorch runner: inference on input {tuple(batch.shape)} failed ({first_line(err)})"
            ) from None
        return BoundInference(
            infer=infer, logits=lambda: last[0].float().cpu().numpy(), timed_call=BOUND_CALL
        )

    def _loaded_torch(self, caller: str) -> Any:
        if self._torch is None:
            raise EdgekdError(f"PyTorch runner: call load() before {caller}")
        return self._torch

    def _keep_thread_count(self) -> None:
        torch = self._torch
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        torch = import_backend("torch", "torch", "the PyTorch runner")
        info.update(
            version=torch.__version__,
            threads=self.threads if self.threads is not None else torch.get_num_threads(),
            model=type(self.model).__name__,
            mode="eager, inference_mode",
        )
        return info
