"""ONNX Runtime: an .onnx file in an InferenceSession, on the CPU by default or on the CUDA execution provider
of onnxruntime-gpu (``device="cuda"``)."""

from __future__ import annotations

import contextlib
import functools
import io
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
    inference_failed,
)
from edgekd.errors import EdgekdError
from edgekd.formats import PRECISIONS

# Execution providers in ONNX Runtime's order of preference for each device we accept; the CPU provider is
# always last so that operators a GPU provider lacks still run.
PROVIDERS_FOR_DEVICE = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Options given to a provider where its defaults would change what an artifact computes: the CUDA provider
# runs float32 convolutions and matrix products in TF32 (10-bit mantissas) unless told not to, which an FP32
# artifact's parity check would rightly fail; an FP16 artifact computes in float16 either way.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}
# Where a bound batch and its logits live for each device: the GPU providers read and write CUDA memory.
BINDING_DEVICE = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}
# What the latency harness times (bind_inference), in the words results files record.
BOUND_CALL = (
    "bound infer: InferenceSession.run_with_iobinding, input and output bound once "
    "(no conversion, allocation or output copy)"
)
# On a GPU provider the batch and the logits stay in CUDA memory; ONNX Runtime synchronizes the provider's
# stream at the end of every run (its default), so the call returns when the logits are computed.
BOUND_CALL_ON_GPU = BOUND_CALL + "; input and logits in CUDA memory, the run ends with a stream synchronize"


class OnnxRuntimeRunner(Runner):
    """One InferenceSession with all graph optimizations, ``threads`` intra-op threads and 1 inter-op thread.

    ``device`` picks the execution providers: ``cpu`` (default), ``cuda`` or ``tensorrt``; a GPU provider that
    this onnxruntime build lacks, or that cannot start (no GPU, missing CUDA libraries), is an error rather
    than a silent fall back to the CPU (ONNX Runtime's Python session falls back by default). Operators a
    GPU provider has no kernel for still run on the CPU provider, as ONNX Runtime assigns them.
    ``precision`` is only reported (ONNX Runtime runs what the file holds); when not given it is read from
    the file's edgekd metadata.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        device: str = "cpu",
        precision: str | None = None,
    ):
        if device not in PROVIDERS_FOR_DEVICE:
            raise EdgekdError(
                f"device: got {device!r} for onnxruntime; allowed: {', '.join(PROVIDERS_FOR_DEVICE)}"
            )
        super().__init__(threads=threads, device=device)
        self.path = existing_file(path, "ONNX model")
        self.precision = check_precision(precision)
        self._session: Any = None

    def _load(self) -> None:
        ort = import_backend("onnxruntime", "onnxruntime", "the ONNX Runtime runner")
        providers = self._providers(ort)
        from edgekd.exporters.onnx_export import refuse_empty

        refuse_empty(self.path)
        preload_note = preload_cuda_libraries(ort) if self.device != "cpu" else ""
        try:
            # enable_fallback=0: a GPU provider that fails to start raises instead of quietly becoming the CPU.
            session = ort.InferenceSession(
                str(self.path),
                sess_options=self._session_options(ort),
                providers=[
                    (name, PROVIDER_OPTIONS[name]) if name in PROVIDER_OPTIONS else name for name in providers
                ],
                enable_fallback=0,
            )
        except Exception as err:  # onnxruntime raises its own Exception subclasses (InvalidProtobuf, Fail...)
            if self.device != "cpu":
                raise self._provider_failed(err, preload_note) from None
            raise EdgekdError(
                f"{self.path}: onnxruntime cannot load it ({first_line(err)}); allowed: a valid .onnx model"
            ) from None
        self._check_provider(session)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise EdgekdError(
                f"{self.path}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                "allowed: one image input and a logits output"
            )
        self._session = session
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        if self.precision is None:
            # edgekd's exporters write the precision into the file's metadata_props.
            written = session.get_modelmeta().custom_metadata_map.get("precision")
            self.precision = written if written in PRECISIONS else None

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        # 0 lets ONNX Runtime pick its default (one thread per physical core).
        options.intra_op_num_threads = self.threads or 0
        # A classifier is one chain of operators: parallel branches would only compete for the same cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Warnings about nodes kept on the CPU or unused initializers would be printed on every load.
        options.log_severity_level = 3
        return options

    def _providers(self, ort: Any) -> list[str]:
        wanted = PROVIDERS_FOR_DEVICE[self.device]
        available = ort.get_available_providers()
        missing = [provider for provider in wanted if provider not in available]
        if missing:
            raise EdgekdError(
                f"device: {self.device!r} needs {', '.join(missing)}, which this onnxruntime lacks "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
            )
        return wanted

    def _provider_failed(self, err: Exception, preload_note: str) -> EdgekdError:
        wanted = PROVIDERS_FOR_DEVICE[self.device][0]
        loader = f"; {preload_note}" if preload_note else ""
        # Either the file or the provider: ONNX Runtime's own first line says which.
        return EdgekdError(
            f"{self.path}: onnxruntime cannot load it on {wanted} ({first_line(err)}{loader}); allowed: a valid "
            ".onnx model on a machine with an NVIDIA GPU and the CUDA and cuDNN libraries onnxruntime-gpu was "
            "built for, or device='cpu'"
        )

    def _check_provider(self, session: Any) -> None:
        """The session must run on the device's first provider: a CPU session timed as a GPU one would lie."""
        wanted = PROVIDERS_FOR_DEVICE[self.device][0]
        used = session.get_providers()
        if not used or used[0] != wanted:
            raise EdgekdError(
                f"{self.path}: device {self.device!r} asked for {wanted}, but the session runs on "
                f"{', '.join(used) or 'no provider'}; allowed: a machine where {wanted} starts, or device='cpu'"
            )
        if hasattr(session, "disable_fallback"):
            session.disable_fallback()  # a provider failure during a run is an error, not a CPU rerun

    @property
    def execution_provider(self) -> str:
        """The provider that runs the model's nodes (those it has kernels for), as ONNX Runtime names it."""
        if self._session is not None:
            return self._session.get_providers()[0]
        return PROVIDERS_FOR_DEVICE[self.device][0]

    def runs_on(self) -> str:
        return f"{self.backend} {self.execution_provider.removesuffix('ExecutionProvider')} EP"

    def run(self, images: np.ndarray) -> np.ndarray:
        session = self._loaded_session("run()")
        batch = as_float32_batch(images)
        try:
            return session.run(self._output_names, {self._input_name: batch})[0]
        except Exception as err:
            raise self._inference_failed(batch, err) from None

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        session = self._loaded_session("bind_inference()")
        batch = as_float32_batch(images)
        binding = session.io_binding()
        try:
            self._bind_input(binding, batch)
            # ONNX Runtime allocates the output on this first run (its shape and type come from the model),
            # which also reports a batch the model rejects now rather than inside a timed loop.
            binding.bind_output(self._output_names[0], BINDING_DEVICE[self.device])
            session.run_with_iobinding(binding)
        except Exception as err:
            raise self._inference_failed(batch, err) from None
        # That output is bound back, so every later run writes into it instead of allocating a new one.
        binding.bind_ortvalue_output(self._output_names[0], binding.get_outputs()[0])
        # The public run_with_iobinding: the private session method under it saves ~0.1 µs of 13 µs
        # (measured on the quickstart student, where session.run() takes 14.6 µs).
        return BoundInference(
            infer=functools.partial(session.run_with_iobinding, binding),
            logits=lambda: binding.copy_outputs_to_cpu()[0],
            timed_call=BOUND_CALL if BINDING_DEVICE[self.device] == "cpu" else BOUND_CALL_ON_GPU,
        )

    def _bind_input(self, binding: Any, batch: np.ndarray) -> None:
        if BINDING_DEVICE[self.device] == "cpu":
            binding.bind_cpu_input(self._input_name, batch)  # read in place, no copy
            return
        # Copied to the GPU once, so the bound run does not copy it on every call.
        ort = import_backend("onnxruntime", "onnxruntime", "the ONNX Runtime runner")
        on_device = ort.OrtValue.ortvalue_from_numpy(batch, BINDING_DEVICE[self.device], 0)
        binding.bind_ortvalue_input(self._input_name, on_device)

    def _loaded_session(self, caller: str) -> Any:
        if self._session is None:
            raise EdgekdError(f"{self.path}: call load() before {caller}")
        return self._session

    def _inference_failed(self, batch: np.ndarray, err: Exception) -> EdgekdError:
        return inference_failed(self.path, batch, err, self._session.get_inputs()[0].shape)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        ort = import_backend("onnxruntime", "onnxruntime", "the ONNX Runtime runner")
        info.update(
            version=ort.__version__,
            path=str(self.path),
            providers=self._session.get_providers() if self._session else PROVIDERS_FOR_DEVICE[self.device],
            execution_provider=self.execution_provider,
            intra_op_threads=self.threads or "onnxruntime default (physical cores)",
            inter_op_threads=1,
            execution_mode="sequential",
            graph_optimization="ORT_ENABLE_ALL",
        )
        if self._session is not None and self.device != "cpu":
            # device_id, cudnn_conv_algo_search, ...: what decides which GPU kernels ran.
            info["provider_options"] = self._session.get_provider_options().get(self.execution_provider, {})
        return info


def preload_cuda_libraries(ort: Any) -> str:
    """Load the CUDA and cuDNN libraries a CUDA build of onnxruntime-gpu links against, from the nvidia-*
    wheels (PyTorch's) where the system has none: the CUDA 13 builds (onnxruntime-gpu 1.31 on PyPI) need
    libcudart.so.13, libcublas.so.13 and cuDNN 9 loaded before a session starts its CUDA provider.

    ``onnxruntime.preload_dlls`` (onnxruntime 1.21 and newer) does this; older builds have no such call and
    rely on the system's library path. It prints what it could not load: that first line is returned, for
    the error a failed provider start gives, instead of being printed.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as err:  # a missing folder or an unloadable library: the session start reports it
        return f"preload_dlls: {first_line(err)}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())  # its warnings are coloured
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"preload_dlls: {lines[0]}" if lines else ""
