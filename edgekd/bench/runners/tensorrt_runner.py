"""TensorRT 10: a serialized engine run on a CUDA GPU, with torch CUDA tensors as the I/O buffers."""

from __future__ import annotations

import re
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
    import_backend,
)
from edgekd.errors import EdgekdError

_CUDA_DEVICE = re.compile(r"cuda(:\d+)?")
# What the latency harness times (bind_inference), in the words results files record.
BOUND_CALL = (
    "bound infer: execute_async_v3 + stream synchronize on device buffers filled once (no host-device copies)"
)


class TensorRTRunner(Runner):
    """Deserializes an engine and runs it with ``execute_async_v3`` on its own CUDA stream.

    An engine is tied to the GPU model and TensorRT version it was built with, so one built elsewhere fails to
    deserialize; that is reported as such. ``run`` copies the batch to the GPU, executes, waits for the stream
    and copies the logits back: its time includes both copies, as a caller holding host arrays would see.
    ``bind_inference`` copies the batch to the GPU once, so the call it returns (which the latency harness
    times) is the execution and the wait for it alone.
    ``threads`` is accepted for the common interface and has no effect (the work runs on the GPU).
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        device: str = "cuda",
        precision: str | None = None,
    ):
        if not _CUDA_DEVICE.fullmatch(device):
            raise EdgekdError(f"device: got {device!r} for tensorrt; allowed: 'cuda' or 'cuda:<index>'")
        super().__init__(threads=threads, device=device)
        self.path = existing_file(path, "TensorRT engine")
        # Only reported: the engine's layer precisions were fixed when it was built.
        self.precision = check_precision(precision)
        self._engine: Any = None
        self._bound_shape: tuple[int, ...] | None = None

    def _load(self) -> None:
        trt = import_backend("tensorrt", "tensorrt", "the TensorRT runner")
        torch = import_backend("torch", "torch", "the TensorRT runner")
        if not torch.cuda.is_available():
            raise EdgekdError(f"{self.path}: a TensorRT engine needs a CUDA GPU, and none is visible here")
        if int(trt.__version__.split(".")[0]) < 10:
            raise EdgekdError(
                f"{self.path}: TensorRT {trt.__version__} is installed; allowed: TensorRT >= 10 (pip install "
                "'tensorrt>=10')"
            )
        self._torch = torch
        self._device = torch.device(self.device)
        with torch.cuda.device(self._device):
            # The stream first: it makes torch initialize the CUDA context that TensorRT then shares.
            self._stream = torch.cuda.Stream(device=self._device)
            # The runtime must outlive the engine it deserialized, so both are kept.
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = self._deserialize(trt)
            self._engine = engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise EdgekdError(
                    f"{self.path}: TensorRT could not create an execution context (GPU memory?)"
                )
        self._input_name, self._output_name = self._io_names(trt, engine)
        self._input_dtype = self._torch_dtype(trt, engine.get_tensor_dtype(self._input_name))
        self._output_dtype = self._torch_dtype(trt, engine.get_tensor_dtype(self._output_name))
        self._trt_version = trt.__version__

    def _deserialize(self, trt: Any) -> Any:
        try:
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as err:  # some TensorRT versions raise instead of returning None
            raise EdgekdError(f"{self.path}: TensorRT cannot deserialize it ({first_line(err)})") from None
        if engine is None:
            raise EdgekdError(
                f"{self.path}: TensorRT {trt.__version__} cannot deserialize it; an engine runs only on the "
                "GPU model and TensorRT version it was built with, so rebuild it on this machine"
            )
        return engine

    def _io_names(self, trt: Any, engine: Any) -> tuple[str, str]:
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgekdError(
                f"{self.path}: the engine has inputs {inputs} and outputs {outputs}; allowed: one image input "
                "and one logits output"
            )
        return inputs[0], outputs[0]

    def _torch_dtype(self, trt: Any, trt_dtype: Any) -> Any:
        torch = self._torch
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if hasattr(trt.DataType, "BF16"):
            dtypes[trt.DataType.BF16] = torch.bfloat16
        if trt_dtype not in dtypes:
            raise EdgekdError(
                f"{self.path}: engine I/O type {trt_dtype} is not supported; allowed: float, half, bf16"
            )
        return dtypes[trt_dtype]

    def _bind(self, shape: tuple[int, ...]) -> None:
        """Set the batch shape and (re)allocate device buffers for it; done only when the shape changes."""
        torch = self._torch
        if not self._context.set_input_shape(self._input_name, shape):
            allowed = tuple(self._engine.get_tensor_shape(self._input_name))
            raise EdgekdError(
                f"{self.path}: input shape {shape} is not allowed by the engine (shape {allowed}, -1 = dynamic, "
                "within the optimization profile it was built with)"
            )
        output_shape = tuple(self._context.get_tensor_shape(self._output_name))
        self._input = torch.empty(shape, dtype=self._input_dtype, device=self._device)
        self._output = torch.empty(output_shape, dtype=self._output_dtype, device=self._device)
        self._context.set_tensor_address(self._input_name, self._input.data_ptr())
        self._context.set_tensor_address(self._output_name, self._output.data_ptr())
        self._bound_shape = shape

    def run(self, images: np.ndarray) -> np.ndarray:
        batch = self._to_device(images, "run()")
        torch = self._torch
        with torch.cuda.stream(self._stream):
            self._execute(batch.shape)
            logits = self._output.float().cpu()
        return logits.numpy()

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        batch = self._to_device(images, "bind_inference()")
        shape = batch.shape

        def infer() -> None:
            self._execute(shape)

        infer()  # an execution failure is reported now, not inside a timed loop
        # The device buffers are the runner's own: a later run() refills them, as the base class says.
        return BoundInference(
            infer=infer, logits=lambda: self._output.float().cpu().numpy(), timed_call=BOUND_CALL
        )

    def _to_device(self, images: np.ndarray, caller: str) -> np.ndarray:
        """Copy ``images`` into the input buffer on the runner's stream (binding buffers for a new shape)."""
        if self._engine is None:
            raise EdgekdError(f"{self.path}: call load() before {caller}")
        batch = as_float32_batch(images)
        if batch.shape != self._bound_shape:
            self._bind(batch.shape)
        torch = self._torch
        with torch.cuda.stream(self._stream):
            self._input.copy_(torch.from_numpy(batch))
        return batch

    def _execute(self, shape: tuple[int, ...]) -> None:
        """Run the engine on the bound buffers and wait for it (after the input copy, on the same stream)."""
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise EdgekdError(f"{self.path}: TensorRT execution failed for input {shape}")
        self._stream.synchronize()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(path=str(self.path), threads=None)
        if self._engine is not None:
            info.update(
                version=self._trt_version,
                gpu=self._torch.cuda.get_device_name(self._device),
                io_dtype=str(self._input_dtype).removeprefix("torch."),
                streams=1,
            )
        return info
