"""The recipe's `teacher:` and `student:` sections: the big model, and the small one with its budget."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from edgekd.config.data import check_unique_classes
from edgekd.config.train import TeacherTrainConfig
from edgekd.config.units import Count, LoosePath, parse_milliseconds
from edgekd.formats import LATENCY_BACKENDS, LatencyBackendName, Precision, format_of_runtime
from edgekd.latency_settings import threads_text
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_THREADS,
    Section,
)

# Constructor arguments edgekd sets itself, from the data: a model_args entry for them would clash.
DATA_MODEL_ARGS = {
    "num_classes": "the data's classes (data.classes, teacher.classes)",
    "in_channels": "the images' channels (data.channels)",
}


def _without_data_args(args: dict[str, Any]) -> dict[str, Any]:
    for key in args:
        if key in DATA_MODEL_ARGS:
            raise ValueError(
                f"'{key}' is set by edgekd from {DATA_MODEL_ARGS[key]}; allowed: the model's own options"
            )
    return args


ModelArgs = Annotated[dict[str, int | float | str | bool], AfterValidator(_without_data_args)]


class TeacherConfig(Section):
    """The big model. Loaded from a checkpoint trained elsewhere, trained by the run (`train:`), or given as
    a file (`file:` a .pt2 or .onnx program, for logit-only methods)."""

    model: str = Field(
        "resnet20",
        description="Zoo name, e.g. resnet56, wrn_40_2, mobilenetv2, torchvision:resnet18, timm:resnet18.",
    )
    model_args: ModelArgs = Field(
        default_factory=dict, description="Extra keyword arguments of the constructor."
    )
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=2,
        max_length=100_000,
        description="The classes (original ids) the teacher was trained on, in the order of its outputs; null: "
        "every class of the data set. With data.classes they fix the label relation: the same classes, a "
        "subset (specialization) or none of them (cross-task, e.g. REFILLED).",
    )
    checkpoint: LoosePath | None = Field(
        None, description="A state_dict saved with torch.save (loaded weights_only)."
    )
    train: TeacherTrainConfig | None = Field(
        None, description="Train the teacher in the run (when no checkpoint is given)."
    )
    file: LoosePath | None = Field(
        None,
        description="A teacher as a file, no Python class needed: a torch.export program (.pt2, from "
        "torch.export.save) or an ONNX model (.onnx, run by ONNX Runtime on the CPU). Only its logits are "
        "read, so it serves logit-only methods (kd); checked before it is loaded (no pickled code is run).",
    )
    trained_on: str | None = Field(
        None,
        max_length=500,
        description="With `checkpoint` or `file`: what the loaded teacher was trained on, in your words (e.g. 'digits "
        "0-4, the training split of split_seed 0'); the report shows it. Null: the report says its training "
        "images are not known (edgekd did not train it).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        given = [name for name in ("checkpoint", "train", "file") if getattr(self, name) is not None]
        if not given:
            raise ValueError(
                "give `checkpoint` (a trained state_dict), `train` (train it in the run) or `file` (a .pt2 or "
                ".onnx teacher)"
            )
        if len(given) > 1:
            raise ValueError(
                f"{given[-1]}: give one of `checkpoint`, `train` or `file`, not {' and '.join(given)}"
            )
        if self.trained_on is not None and self.train is not None:
            raise ValueError(
                "trained_on: states what a loaded teacher was trained on; a teacher trained by the run "
                "(`train`) is described by the run itself (allowed: trained_on with `checkpoint` or `file`)"
            )
        if self.checkpoint is not None and not self.checkpoint.is_file():
            what = "is a folder" if self.checkpoint.is_dir() else "does not exist"
            raise ValueError(
                f"checkpoint: '{self.checkpoint}' {what}; allowed: a checkpoint file (torch.save)"
            )
        if self.file is not None:
            self._check_file()
        if self.classes is not None:
            check_unique_classes(self.classes)
        return self

    def _check_file(self) -> None:
        """A file teacher is the file alone: a zoo model or its options beside it would be ignored."""
        for name in ("model", "model_args"):
            if name in self.model_fields_set:
                raise ValueError(
                    f"{name}: a teacher given as `file` is the file's program, not a zoo model; allowed: "
                    f"`file` without `{name}`"
                )
        if self.file.suffix not in (".pt2", ".onnx"):
            raise ValueError(
                f"file: '{self.file}' has the suffix '{self.file.suffix}'; allowed: .pt2 (torch.export.save) "
                "or .onnx"
            )
        if not self.file.is_file():
            what = "is a folder" if self.file.is_dir() else "does not exist"
            raise ValueError(f"file: '{self.file}' {what}; allowed: a .pt2 or .onnx file")


class ProxyConfig(Section):
    """Rule `proxy`: the largest fitting members, each trained briefly, the best on validation wins."""

    candidates: int = Field(3, ge=2, le=16, description="How many of the largest fitting members compete.")
    epochs: int = Field(
        3,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs each competitor trains (cross-entropy on the student's "
        "labelled images, the recipe's optimizer, a cosine schedule).",
    )


class LatencyBudgetConfig(Section):
    """A latency limit on the runtime the student ships on. Every family member is exported in that format
    and precision with random weights (BatchNorm statistics from real training images, INT8 calibrated on
    real images) and timed with the benchmark section's harness settings at this batch and thread count."""

    limit_ms: Annotated[float, BeforeValidator(parse_milliseconds), Field(gt=0, le=1e6)] = Field(
        description="The limit on `statistic`, in ms; '500us' and '2ms' are understood."
    )
    # The runtimes and their precisions come from the backend catalog (edgekd.formats), pytorch beside them.
    backend: LatencyBackendName = Field("openvino", description="The runtime the student ships on.")
    precision: Precision = Field("fp32", description="The artifact's precision on that runtime.")
    batch: int = Field(1, ge=1, le=MAX_BATCH, description="Images per inference call.")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="Inference threads; null: benchmark.threads."
    )
    statistic: Literal["p50", "p90", "p99"] = Field("p50", description="Which latency percentile is bounded.")
    rule: Literal["largest", "proxy"] = Field(
        "largest",
        description="Which fitting member is chosen: 'largest' (most parameters; default) or 'proxy' (the "
        "`proxy.candidates` largest, trained `proxy.epochs` epochs each, best validation accuracy).",
    )
    proxy: ProxyConfig = ProxyConfig()
    cache_dir: LoosePath | None = Field(
        None,
        description="Where measured latencies are kept, per machine fingerprint; null: "
        "<output_dir>/latency_cache.",
    )

    @model_validator(mode="after")
    def _check_precision(self) -> LatencyBudgetConfig:
        allowed = LATENCY_BACKENDS[self.backend]
        if self.precision not in allowed:
            raise ValueError(
                f"precision: {self.precision} is not sized on {self.backend} (allowed: {', '.join(allowed)})"
            )
        return self

    @property
    def format(self) -> str | None:
        return format_of_runtime(self.backend)

    @property
    def artifact_name(self) -> str:
        """The name of the deployment record it bounds, as edgekd.deploy names them."""
        return f"{self.format or 'pytorch'} {self.precision}"

    def describe(self, threads: int | None) -> str:
        """``p50 <= 0.05 ms on openvino int8, batch 1, 2 threads``."""
        used = threads_text(threads)
        return (
            f"{self.statistic} <= {self.limit_ms:g} ms on {self.backend} {self.precision}, "
            f"batch {self.batch}, {used}"
        )


class BudgetConfig(Section):
    """What the student may cost: parameters, latency on the target runtime, or both."""

    params: Count | None = Field(
        None, description="Most parameters the student may have; '200k' and '1.5M' are understood."
    )
    latency: LatencyBudgetConfig | None = Field(
        None,
        description="A latency limit on the target runtime (combined with `params` when both are given).",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetConfig:
        if self.params is None and self.latency is None:
            raise ValueError("give `params`, `latency` or both")
        return self


class StudentConfig(Section):
    """The small model: an explicit zoo model, or the largest member of a family that fits the budget."""

    family: (
        Literal[
            "resnet", "wrn", "mobilenetv2", "timm_mobilenetv4", "timm_mobilenetv3", "timm_efficientnet_lite"
        ]
        | None
    ) = Field(None, description="Fit this family to `budget` (timm_* families need timm).")
    model: str | None = Field(None, description="An explicit zoo model instead of a family.")
    model_args: ModelArgs = Field(default_factory=dict)
    budget: BudgetConfig | None = None

    @model_validator(mode="after")
    def _family_or_model(self) -> StudentConfig:
        if (self.family is None) == (self.model is None):
            raise ValueError("give exactly one of `family` (sized to the budget) or `model`")
        if self.family is not None and self.budget is None:
            raise ValueError(f"budget: family '{self.family}' needs a `budget` to choose its size")
        return self
