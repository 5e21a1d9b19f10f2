"""The recipe's `export:` and `benchmark:` sections: which students become which artifacts, how each is
checked against PyTorch, and how they are timed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgekd.formats import FORMAT_PRECISIONS, PARITY_DEFAULTS, FormatName, Precision
from edgekd.latency_settings import LatencySettings
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGES,
    Section,
    shown_value,
)


# The formats, their precisions and the default parity limits are declared in edgekd.formats, so that a
# recipe is checked without importing a backend and the parity check's own defaults are these.
class ParityConfig(Section):
    """How close each artifact's logits must be to the PyTorch student's on the same validation images."""

    images: int = Field(
        256, ge=8, le=MAX_IMAGES, description="Validation images compared (all, when fewer exist)."
    )
    fp32_max_abs: float = Field(
        PARITY_DEFAULTS["fp32"].max_abs, gt=0, description="FP32: largest allowed absolute logit difference."
    )
    fp16_max_abs: float = Field(
        PARITY_DEFAULTS["fp16"].max_abs, gt=0, description="FP16: largest allowed absolute logit difference."
    )
    fp16_min_top1: float = Field(
        PARITY_DEFAULTS["fp16"].min_top1, ge=0, le=1, description="FP16: least top-1 agreement (fraction)."
    )
    int8_min_top1: float = Field(
        PARITY_DEFAULTS["int8"].min_top1,
        ge=0,
        le=1,
        description="INT8: least top-1 agreement with the PyTorch student (fraction).",
    )
    int8_max_acc_drop: float = Field(
        2.0, ge=0, description="INT8: largest test-accuracy drop against the PyTorch student, in points."
    )


# The INT8 paths that train the quantized student (edgekd.int8.stage).
QUANTIZATION_AWARE = ("qat", "qad")


class Int8Config(Section):
    """How the INT8 artifacts are quantized: after training (PTQ), or by training the quantized student."""

    mode: Literal["ptq", "accuracy_control", "qat", "qad", "auto"] = Field(
        "ptq",
        description="ptq: post-training quantization, each exporter calibrating on export.calibration_images; "
        "accuracy_control: PTQ with NNCF's accuracy control for OpenVINO (max_drop; ONNX Runtime has none, so "
        "its INT8 stays plain PTQ); qat: the selected student, PTQ-calibrated by NNCF, fine-tuned with "
        "simulated INT8 on cross-entropy for `epochs`; qad: the same on the method's KD objective against "
        "the frozen teacher (quantization-aware distillation); auto: PTQ, then, only if an INT8 artifact fails "
        "the gate on validation images, QAD, then accuracy control. The ONNX and OpenVINO INT8 artifacts "
        "of qat/qad come from the one fine-tuned fake-quantized student; the other formats stay PTQ.",
    )
    max_drop: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="accuracy_control (and auto's last resort): largest top-1 drop NNCF's accuracy control "
        "allows on the validation split (a fraction: 0.01 = one point).",
    )
    epochs: int = Field(
        5, ge=1, le=MAX_EPOCHS, description="qat/qad: epochs of the quantization-aware stage."
    )
    lr: float | None = Field(
        None,
        gt=0,
        le=100,
        description="qat/qad: the stage's peak learning rate (cosine to zero, the recipe's optimizer); "
        "default: the recipe's train.optimizer.lr / 100, a fine-tuning rate.",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        le=100,
        description="qad: KD temperature; default: the method's own (kd, srm, fitnet, ...), else 4.",
    )
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="qad: weight of the KD term (1 - alpha weights cross-entropy); default: the method's "
        "own, else 0.9.",
    )

    @property
    def trains(self) -> bool:
        """Whether the mode may train a quantization-aware stage (auto does only when PTQ fails)."""
        return self.mode in (*QUANTIZATION_AWARE, "auto")


class ExportConfig(Section):
    """Which students to deploy, which artifacts of them to write, and how they are checked."""

    models: Literal["best_val", "main", "all"] | list[str] = Field(
        "best_val",
        description="The students exported, checked and timed: best_val: the one to ship, chosen on validation "
        "accuracy (mean over seeds) among the students within the budget, ties going to the main method "
        "(never the test split); main: the main method's, whatever its accuracy; all: every student of the run; "
        "or a list of method names, e.g. [kd, scratch] (the first is the one shipped). Over several seeds each "
        "method's first seed's student is the one exported.",
    )
    targets: dict[FormatName, list[Precision]] = Field(
        default_factory=dict,
        description="Format -> precisions, e.g. {onnx: [fp32, int8], openvino: [fp32, fp16, int8]}; "
        "empty: no export. TensorRT engines are built only where TensorRT and a GPU exist; elsewhere the "
        "report gives the trtexec command to build them on the target.",
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset.")
    calibration_images: int = Field(
        300,
        ge=1,
        le=MAX_IMAGES,
        description="Training images (no augmentation) that calibrate INT8 quantization.",
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="ONNX Runtime INT8 calibrator."
    )
    int8: Int8Config = Int8Config()
    max_batch: int = Field(
        64, ge=1, le=MAX_BATCH, description="Largest batch of TensorRT's dynamic-batch profile."
    )
    parity: ParityConfig = ParityConfig()

    @property
    def wants_int8(self) -> bool:
        """Whether any target asks for an INT8 artifact."""
        return any("int8" in precisions for precisions in self.targets.values())

    @model_validator(mode="after")
    def _check_precisions(self) -> ExportConfig:
        for format_name, precisions in self.targets.items():
            allowed = FORMAT_PRECISIONS[format_name]
            for index, precision in enumerate(precisions):
                if precision not in allowed:
                    raise ValueError(
                        f"targets.{format_name}.{index}: {precision} is not written by the {format_name} "
                        f"exporter (allowed: {', '.join(allowed)})"
                    )
            if len(set(precisions)) != len(precisions):
                raise ValueError(f"targets.{format_name}: {shown_value(precisions)} names a precision twice")
        return self


# The timing fields are the latency harness's own settings, inherited, so that a recipe, `edgekd bench` and
# the library time alike; the YAML keys under `benchmark:` are those fields' names.
class BenchmarkConfig(LatencySettings):
    """Latency and accuracy of the PyTorch student and of every exported artifact."""

    enabled: bool = Field(True, description="Measure latency (accuracy of the artifacts is always measured).")
    onnxruntime_device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="Where the ONNX artifacts are checked, evaluated and timed (and a latency budget on "
        "onnxruntime is sized): 'cpu' (ONNX Runtime's CPU execution provider) or 'cuda' (its CUDA execution "
        "provider: needs onnxruntime-gpu, the `gpu` extra, and an NVIDIA GPU). Other formats are unaffected.",
    )
