"""PyTorch eager mode: the reference every exported artifact is compared against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.bench.runners.base import Runner, as_float32_batch, import_backend
from edgekd.errors import EdgekdError

if TYPE_CHECKING:
    from torch import nn


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    ``load()`` moves the model to ``device`` and switches it to eval mode in place (no copy, so a large
    teacher is not duplicated). ``threads`` sets ``torch.set_num_threads``, which is process-wide: ``run``
    sets it again when something else changed it since, so that the recorded thread count stays true.
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
        torch = self._torch
        if torch is None:
            raise EdgekdError("PyTorch runner: call load() before run()")
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            batch = torch.from_numpy(as_float32_batch(images)).to(self._device)
            logits = self.model(batch)
            # .cpu() waits for a CUDA device, so the call stays synchronous.
            return logits.float().cpu().numpy()

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
