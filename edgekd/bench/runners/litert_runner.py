"""LiteRT: a .tflite in ai-edge-litert's Interpreter, on the CPU through its default XNNPACK delegate.

edgekd's .tflite files hold batch 1 (see edgekd.exporters.litert_export): another batch size resizes the
input tensor and reallocates, once per size. An INT8 file takes and returns int8 tensors: the float batch is
quantized with the input tensor's scale and zero point, and the logits dequantized with the output's.
"""

from __future__ import annotations

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
    inference_failed,
)
from edgekd.errors import EdgekdError
from edgekd.formats import PRECISIONS

BOUND_CALL = (
    "bound infer: Interpreter.invoke() on an input tensor set once (an INT8 model's input quantized to "
    "int8 then, outside the timed call)"
)


class LiteRtRunner(Runner):
    """One Interpreter with ``threads`` threads (None: LiteRT's default) and its default XNNPACK delegate.

    ``precision`` is only reported (the interpreter runs what the file holds); when not given it is read
    from the file's edgekd metadata.
    """

    backend = "litert"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None):
        super().__init__(threads=threads, device="cpu")
        self.path = existing_file(path, "LiteRT model")
        self.precision = check_precision(precision)
        self._interpreter: Any = None

    def _load(self) -> None:
        litert = import_backend("ai_edge_litert.interpreter", "ai-edge-litert", "the LiteRT runner")
        from edgekd.exporters.litert_export import check_tflite_file, read_metadata

        check_tflite_file(self.path)
        try:
            interpreter = litert.Interpreter(model_path=str(self.path), num_threads=self.threads)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            raise EdgekdError(
                f"{self.path}: LiteRT cannot load it ({first_line(err)}); allowed: a valid .tflite"
            ) from None
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgekdError(
                f"{self.path}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                "allowed: one image input and one logits output"
            )
        self._interpreter = interpreter
        self._input, self._output = inputs[0], outputs[0]
        if self.precision is None:
            written = read_metadata(self.path).get("precision")
            self.precision = written if written in PRECISIONS else None

    def prepare_batch(self, batch: int) -> None:
        self._resize_for(batch)

    def _resize_for(self, batch: int) -> None:
        """Give the input tensor ``batch`` images (the file holds 1); reallocating only when it changes."""
        interpreter = self._ready("prepare_batch()")
        index = self._input["index"]
        shape = interpreter.get_input_details()[0]["shape"]
        if shape[0] == batch:
            return
        interpreter.resize_tensor_input(index, [batch, *shape[1:]])
        interpreter.allocate_tensors()
        # Tensor details (the output's shape) change with the allocation.
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]

    def run(self, images: np.ndarray) -> np.ndarray:
        self._set_input(images)
        self._interpreter.invoke()
        return self._read_logits()

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        self._set_input(images)
        interpreter = self._interpreter
        try:
            interpreter.invoke()  # a batch the model rejects is reported now, not in a timed loop
        except (RuntimeError, ValueError) as err:
            raise inference_failed(self.path, np.asarray(images), err, self._input["shape"]) from None
        return BoundInference(infer=interpreter.invoke, logits=self._read_logits, timed_call=BOUND_CALL)

    def _set_input(self, images: np.ndarray) -> None:
        interpreter = self._ready("run()")
        batch = as_float32_batch(images)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self._input["shape"][1:]):
            raise inference_failed(
                self.path, batch, ValueError("wrong image shape"), list(self._input["shape"])
            )
        self._resize_for(len(batch))
        try:
            interpreter.set_tensor(self._input["index"], quantize_input(batch, self._input))
        except (RuntimeError, ValueError) as err:
            raise inference_failed(self.path, batch, err, list(self._input["shape"])) from None

    def _read_logits(self) -> np.ndarray:
        # get_tensor copies, so the logits survive the next invoke().
        return dequantize_output(self._interpreter.get_tensor(self._output["index"]), self._output)

    def _ready(self, caller: str) -> Any:
        if self._interpreter is None:
            raise EdgekdError(f"{self.path}: call load() before {caller}")
        return self._interpreter

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        from importlib.metadata import version

        info.update(
            version=version("ai-edge-litert"),
            path=str(self.path),
            delegate="XNNPACK (LiteRT's default CPU delegate)",
            threads=self.threads or "LiteRT default",
        )
        if self._interpreter is not None:
            info["io_dtype"] = np.dtype(self._input["dtype"]).name
        return info


def quantize_input(batch: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """The float batch as the input tensor's dtype: unchanged for a float input, quantized for an int one."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return batch.astype(dtype, copy=False)
    scale, zero_point = details["quantization"]
    limits = np.iinfo(dtype)
    quantized = np.round(batch / scale) + zero_point
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize_output(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Logits as float32: an int output tensor is dequantized with its scale and zero point."""
    if np.dtype(details["dtype"]).kind == "f":
        return values.astype(np.float32, copy=False)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
