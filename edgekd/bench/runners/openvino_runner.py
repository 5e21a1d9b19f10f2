"""OpenVINO: an IR (.xml + .bin), or an .onnx, compiled for the CPU and run through one reused InferRequest."""

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

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
HINTS = ("latency", "throughput")
# What the compiled model is asked back for describe(): the settings that decide its speed and accuracy.
REPORTED_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
# Where edgekd's OpenVINO exporter keeps its metadata inside the IR (rt_info, saved in the .xml).
RT_INFO_SECTION = "edgekd"
# What the latency harness times (bind_inference), in the words results files record.
BOUND_CALL = (
    "bound infer: InferRequest.infer() on an input tensor set once (no conversion or tensor creation)"
)


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
    """Compiles a model on the OpenVINO CPU plugin with explicit threads, performance hint and precision.

    ``precision`` names what the artifact holds (fp32, fp16-compressed or int8-quantized weights); when not
    given it is read from the IR's edgekd metadata. ``inference_precision`` is the arithmetic the CPU plugin
    uses for non-quantized layers. Left unset it follows the artifact: f32 for fp32 and int8 artifacts (so
    that INT8 against FP32 measures quantization alone) and for unknown ones, f16 for fp16 artifacts where
    the CPU computes in f16 natively (else f32). It is never left to the plugin, because on CPUs with
    AVX512-BF16/AMX the plugin otherwise silently runs FP32 models in bf16 (2e-2 max error on ResNet-18
    logits was measured). Pass ``inference_precision="bf16"`` to measure bf16 on purpose.

    A model whose batch dimension is fixed is reshaped to a dynamic batch before compiling, so every batch
    size runs through the one compiled model. A dynamic shape costs shape inference on every call: nothing
    measurable at ResNet-18 size, but about 10 µs of a 50 µs call on the quickstart student. So
    :meth:`prepare_batch` (called by the latency harness before timing a batch size) compiles a copy with
    that batch fixed, as a deployed static model and ``benchmark_app -shape`` run it.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: str | None = None,
        hint: str = "latency",
        device: str = "cpu",
        inference_precision: str | None = None,
    ):
        _choice("device", device, ("cpu",))
        super().__init__(threads=threads, device=device)
        self.path = existing_file(path, "OpenVINO model")
        self.precision = check_precision(precision)
        self.hint = _choice("hint", hint, HINTS)
        if inference_precision is not None:
            _choice("inference_precision", inference_precision, INFERENCE_PRECISIONS)
        self.inference_precision = inference_precision
        self._compiled: Any = None
        self._request: Any = None
        self._dynamic_batch: bool | None = None
        self._static_requests: dict[int, Any] = {}

    def _load(self) -> None:
        ov = import_backend("openvino", "openvino", "the OpenVINO runner")
        core = ov.Core()
        model = self._read(core)
        if self.precision is None:
            self.precision = _written_precision(model)
        if self.inference_precision is None:
            self.inference_precision = self._inference_precision_for_artifact(core)
        self._dynamic_batch = _make_batch_dynamic(ov, model)
        try:
            self._compiled = core.compile_model(model, "CPU", self._compile_config(ov))
        except RuntimeError as err:
            raise EdgekdError(
                f"{self.path}: the OpenVINO CPU plugin cannot compile it with {self.describe_settings()} "
                f"({first_line(err)})"
            ) from None
        # One request, created once: creating it per call would allocate and be timed as inference.
        self._request = self._compiled.create_infer_request()
        self._ov = ov
        self._core = core
        self._device_name = core.get_property("CPU", "FULL_DEVICE_NAME")

    def prepare_batch(self, batch: int) -> None:
        if self._request is None:
            raise EdgekdError(f"{self.path}: call load() before prepare_batch()")
        if not self._dynamic_batch or batch in self._static_requests:
            return
        model = self._read(self._core)
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_dynamic:
            return
        static = self._ov.PartialShape([batch, *[shape[i] for i in range(1, shape.rank.get_length())]])
        try:
            model.reshape({model.input(0): static})
            compiled = self._core.compile_model(model, "CPU", self._compile_config(self._ov))
        except RuntimeError:
            return  # e.g. spatial dimensions left dynamic: the dynamic model serves this batch as well
        self._static_requests[batch] = compiled.create_infer_request()

    def _read(self, core: Any) -> Any:
        # Checked first: given a file it cannot read, OpenVINO tries its other frontends (TensorFlow text, ...)
        # and prints their parser noise.
        if self.path.suffix == ".xml":
            from edgekd.exporters.openvino_export import check_ir_files

            check_ir_files(self.path)
        elif self.path.suffix == ".onnx":
            from edgekd.exporters.onnx_export import load_checked

            load_checked(self.path)
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as err:
            raise EdgekdError(
                f"{self.path}: OpenVINO cannot read it ({first_line(err)}); allowed: an IR .xml with its .bin "
                "next to it, or an .onnx model"
            ) from None
        if len(model.inputs) != 1 or not model.outputs:
            raise EdgekdError(
                f"{self.path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                "allowed: one image input and a logits output"
            )
        return model

    def _inference_precision_for_artifact(self, core: Any) -> str:
        if self.precision != "fp16":
            return "f32"
        # f16 arithmetic is what an FP16 artifact was made for; the plugin offers it only on CPUs with native
        # f16 units (e.g. AMX-FP16 or ARM), and elsewhere f32 keeps the result faithful.
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "f16" if "FP16" in capabilities else "f32"

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
        request, batch = self._set_input(images, "run()")
        try:
            # Setting the tensor and calling infer() with no inputs skips the Python data dispatcher of
            # infer(inputs): measured 5-10 µs less per call, a quarter of a tiny model's latency. The output
            # is copied because the request reuses its buffer on the next call.
            request.infer()
            return request.get_output_tensor(0).data.copy()
        except RuntimeError as err:
            raise self._inference_failed(batch, err) from None

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        request, batch = self._set_input(images, "bind_inference()")
        try:
            request.infer()  # a batch the model rejects at run time is reported now, not inside a timed loop
        except RuntimeError as err:
            raise self._inference_failed(batch, err) from None
        # The fastest public way to run a request whose input is set. Measured on the quickstart student
        # (21 µs of C++ latency, which is what benchmark_app reports), wall time from Python minus that
        # latency: infer() 2.6 µs; infer(share_outputs=True) 2.8 µs (pybind's keyword handling costs more
        # than copying 10 logits saves); the pybind base class's infer() 1.8 µs, but it lives in the private
        # openvino._pyopenvino. start_async() + wait() hands the work to the plugin's stream thread: 32 µs a
        # call against 23 µs, and it slows the sync calls made after it.
        return BoundInference(
            infer=request.infer,
            logits=lambda: request.get_output_tensor(0).data.copy(),
            timed_call=BOUND_CALL,
        )

    def _set_input(self, images: np.ndarray, caller: str) -> tuple[Any, np.ndarray]:
        """The request for this batch size (the static one prepare_batch made, if any) with ``images`` set."""
        if self._request is None:
            raise EdgekdError(f"{self.path}: call load() before {caller}")
        batch = as_float32_batch(images)
        request = self._static_requests.get(len(batch), self._request)
        try:
            # The request reads the array in place (a Tensor sharing its memory, which keeps the array alive)
            # and a dynamic batch dimension takes the array's size.
            request.set_input_tensor(self._ov.Tensor(batch, shared_memory=True))
        except RuntimeError as err:
            raise self._inference_failed(batch, err) from None
        return request, batch

    def _inference_failed(self, batch: np.ndarray, err: RuntimeError) -> EdgekdError:
        return inference_failed(self.path, batch, err, self._compiled.input(0).get_partial_shape())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        ov = import_backend("openvino", "openvino", "the OpenVINO runner")
        info.update(
            version=ov.get_version(),
            path=str(self.path),
            hint=self.hint,
            inference_precision=self.inference_precision,
            dynamic_batch=self._dynamic_batch,
            static_batches=sorted(self._static_requests),
        )
        if self._compiled is not None:
            info["cpu"] = self._device_name
            info["compiled"] = {
                name: _readable(self._compiled.get_property(name)) for name in REPORTED_PROPERTIES
            }
            info["streams"] = int(self._compiled.get_property("NUM_STREAMS"))
            info["threads"] = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        return info


def _written_precision(model: Any) -> str | None:
    """The precision edgekd's exporter wrote into the IR's rt_info, or None (another tool's IR, an .onnx)."""
    key = [RT_INFO_SECTION, "precision"]
    if not model.has_rt_info(key):
        return None
    written = model.get_rt_info(key).astype(str)
    return written if written in PRECISIONS else None


def _make_batch_dynamic(ov: Any, model: Any) -> bool:
    """Make the input's first dimension dynamic if it is not; False where the graph pins it (kept static)."""
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic:
        return True
    if shape.rank.get_length() == 0:
        return False
    if shape[0].is_dynamic:
        return True
    dynamic = ov.PartialShape([ov.Dimension(), *[shape[i] for i in range(1, shape.rank.get_length())]])
    try:
        model.reshape({model.input(0): dynamic})
    except RuntimeError:
        # e.g. a Reshape with a hard-coded batch size: the model then runs at its own batch size only.
        return False
    return True
