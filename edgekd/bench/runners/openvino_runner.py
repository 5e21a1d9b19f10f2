"""OpenVINO: an IR (.xml + .bin) compiled for the CPU, run through one reused InferRequest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench.runners.base import Runner, as_float32_batch, existing_file, first_line, import_backend
from edgekd.errors import EdgekdError

ARTIFACT_PRECISIONS = ("fp32", "fp16", "int8")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
HINTS = ("latency", "throughput")
# What the compiled model is asked back for describe(): the settings that decide its speed and accuracy.
REPORTED_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise EdgekdError(f"{field}: got {value!r}; allowed: {', '.join(allowed)}")
    return value


def _readable(value: Any) -> str | int:
    """OpenVINO property values as plain JSON-friendly values: f32 rather than <Type: 'float32'>."""
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    if hasattr(value, "name"):
        return value.name
    return value if isinstance(value, int) else str(value)


class OpenVinoRunner(Runner):
    """Compiles an IR on the OpenVINO CPU plugin with explicit threads, performance hint and precision.

    ``precision`` names what the artifact holds (fp32, fp16-compressed or int8-quantized weights) and is
    reported. ``inference_precision`` is the arithmetic the CPU plugin may use for non-quantized layers; it
    defaults to f32 for every artifact because on CPUs with AVX512-BF16/AMX the plugin otherwise silently runs
    in bf16 (2e-2 max error on ResNet-18 logits was measured), which would mix a precision change into a
    backend comparison. Pass ``inference_precision="bf16"`` to measure bf16 on purpose.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: str = "fp32",
        hint: str = "latency",
        device: str = "cpu",
        inference_precision: str = "f32",
    ):
        _choice("device", device, ("cpu",))
        super().__init__(threads=threads, device=device)
        self.path = existing_file(path, "OpenVINO IR")
        self.precision = _choice("precision", precision, ARTIFACT_PRECISIONS)
        self.hint = _choice("hint", hint, HINTS)
        self.inference_precision = _choice("inference_precision", inference_precision, INFERENCE_PRECISIONS)
        self._compiled: Any = None
        self._request: Any = None

    def _load(self) -> None:
        ov = import_backend("openvino", "openvino", "the OpenVINO runner")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as err:
            raise EdgekdError(
                f"{self.path}: OpenVINO cannot read it ({first_line(err)}); allowed: an IR .xml with its .bin "
                "next to it, or an .onnx model"
            ) from None
        try:
            self._compiled = core.compile_model(model, "CPU", self._compile_config(ov))
        except RuntimeError as err:
            raise EdgekdError(
                f"{self.path}: the OpenVINO CPU plugin cannot compile it with {self.describe_settings()} "
                f"({first_line(err)})"
            ) from None
        # One request, created once: creating it per call would allocate and be timed as inference.
        self._request = self._compiled.create_infer_request()
        self._device_name = core.get_property("CPU", "FULL_DEVICE_NAME")

    def _compile_config(self, ov: Any) -> dict[str, Any]:
        hints = ov.properties.hint
        mode = hints.PerformanceMode.LATENCY if self.hint == "latency" else hints.PerformanceMode.THROUGHPUT
        element_types = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}
        config = {
            hints.performance_mode(): mode,
            hints.inference_precision(): element_types[self.inference_precision],
        }
        if self.threads is not None:
            config[ov.properties.inference_num_threads()] = self.threads
        return config

    def describe_settings(self) -> str:
        threads = self.threads if self.threads is not None else "default"
        return f"hint={self.hint}, threads={threads}, inference_precision={self.inference_precision}"

    def run(self, images: np.ndarray) -> np.ndarray:
        batch = as_float32_batch(images)
        try:
            # share_inputs: the request reads the array in place (it is contiguous float32 and the call is
            # synchronous); a dynamic batch dimension takes the array's size on every call. Outputs are copied
            # (share_outputs=False) because the request reuses its output buffer on the next call.
            return self._request.infer({0: batch}, share_inputs=True)[0]
        except RuntimeError as err:
            expected = self._compiled.input(0).get_partial_shape()
            raise EdgekdError(
                f"{self.path}: inference on input {tuple(batch.shape)} failed ({first_line(err)}); "
                f"the model expects {expected}"
            ) from None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        ov = import_backend("openvino", "openvino", "the OpenVINO runner")
        info.update(
            version=ov.get_version(),
            path=str(self.path),
            precision=self.precision,
            hint=self.hint,
            inference_precision=self.inference_precision,
        )
        if self._compiled is not None:
            info["cpu"] = self._device_name
            info["compiled"] = {
                name: _readable(self._compiled.get_property(name)) for name in REPORTED_PROPERTIES
            }
            info["streams"] = int(self._compiled.get_property("NUM_STREAMS"))
            info["threads"] = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        return info
