"""The recipe: one YAML file that states a whole run, validated into frozen, typed sections.

Recipes are data, never code: they are read with ``yaml.safe_load`` (no object tags) and every default lives
in this schema, so ``edgekd schema`` shows all of it. Unknown keys are errors.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from edgekd.distill.registry import distill_section_model
from edgekd.errors import RecipeError
from edgekd.formats import (
    FORMAT_PRECISIONS,
    LATENCY_BACKENDS,
    PARITY_DEFAULTS,
    FormatName,
    LatencyBackendName,
    Precision,
    format_of_runtime,
)
from edgekd.latency_settings import LatencySettings, threads_text
from edgekd.safe_yaml import YamlRefused, load_yaml_text, read_yaml_file
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_THREADS,
    Section,
    lower_first,
    shown_value,
)

# Class counts of the data sets whose label set is known without reading them.
KNOWN_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashionmnist": 10}
DATASETS_NEEDING_ROOT = ("cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder")


_COUNT_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_count(value: Any) -> Any:
    """Read '200k', '1.5M' or 200000 as an integer count; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", value)
        if match:
            number, suffix = match.groups()
            return round(float(number) * _COUNT_SUFFIXES.get(suffix.lower(), 1))
    return value


Count = Annotated[int, BeforeValidator(parse_count), Field(gt=0)]
# Bounds no real run needs but an accident (a typo, 1e12) reaches: refused before anything is built.
# Sections are strict (a number must be a number, a flag a flag); a path may be written as a string.
LoosePath = Annotated[Path, Field(strict=False)]


# ----------------------------------------------------------------------------------------------- data
def check_unique_classes(classes: list[int]) -> None:
    """A class list (the student's or the teacher's) names each class once."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: {shown_value(classes)} repeats an id")


class NormalizeStats(Section):
    """Explicit per-channel normalization: what the teacher was trained with, e.g. a model's own values."""

    mean: list[Annotated[float, Field(ge=-10, le=10)]] = Field(min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeStats:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values, std {len(self.std)}; allowed: one per channel"
            )
        return self


NormalizeMode = Literal["auto", "train", "imagenet", "dataset"]


class DataConfig(Section):
    """Where the images come from and how they are split, subset and fed."""

    dataset: Literal["digits", "cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"] = Field(
        "digits", description="'digits' is scikit-learn's bundled 8x8 handwritten digits: no download needed."
    )
    root: LoosePath | None = Field(
        None, description="Local folder of a torchvision data set or an ImageFolder tree."
    )
    download: bool = Field(False, description="Let torchvision download the data set into `root`.")
    normalize: NormalizeMode | NormalizeStats = Field(
        "auto",
        description="Per-channel mean/std the images are normalized with (recorded in metrics.json and in every "
        "artifact's metadata). train: computed on the teacher's training images; imagenet: ImageNet's; "
        "dataset: the data set's published values (ImageNet's for an ImageFolder; digits: train); "
        "{mean: [...], std: [...]}: given. auto: imagenet for a torchvision or timm teacher (their ImageNet default), "
        "train for an ImageFolder, dataset otherwise.",
    )
    image_cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="ImageFolder: decode each image file once, to the fed size and channels (uint8), instead of "
        "on every epoch. auto: in memory when that takes at most a quarter of the available memory, else on "
        "disk (image_cache_dir); memory; disk (a cache later runs reuse; a changed file is decoded again); off: "
        "read every file on every load.",
    )
    image_cache_dir: LoosePath | None = Field(
        None,
        description="Folder of the disk image cache; null: $XDG_CACHE_HOME/edgekd/images (~/.cache/edgekd/images).",
    )
    image_size: int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="Resize images to this square size; null keeps it."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Force 1 (grayscale) or 3 (RGB) input channels; null keeps the data set's own."
    )
    val_fraction: float = Field(
        0.15, gt=0, lt=0.5, description="Part of the training pool held out for model selection."
    )
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=0.5,
        description="Part held out as test set, for data sets without an official test split.",
    )
    split_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the train/val/test split (kept apart from the run's seed)."
    )
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        max_length=100_000,
        description="The student's classes (original ids), remapped to 0..K-1 in this order.",
    )
    per_class: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGES,
        description="Few-shot: the student gets this many labelled training images per class, drawn from "
        "`student_pool`.",
    )
    student_pool: Literal["teacher_train", "customer"] = Field(
        "teacher_train",
        description="Where the student's images (labelled, unlabelled, and validation with val_per_class) "
        "come from. 'teacher_train': the teacher's own training images (the SKD paper's protocol: the "
        "teacher has seen, with labels, every image the student learns from). 'customer': a hold-out of "
        "the training pool (`customer_fraction` of each class) that the teacher never sees, as when a "
        "customer brings new images of its classes.",
    )
    customer_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="With student_pool 'customer': the part of each class's training images held out from "
        "the teacher for the student.",
    )
    draws: Literal["per_seed", "fixed"] = Field(
        "per_seed",
        description="The student's few-shot, validation and unlabelled draws: 'per_seed' draws them anew "
        "for every student seed (every method of one seed gets the same draw, so comparisons stay paired); "
        "'fixed' uses one draw (from split_seed) for all seeds.",
    )
    val_per_class: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGES,
        description="Select the student on this many labelled validation images per class, drawn from "
        "the student's pool under 'customer' (disjoint from its training images) and from the validation "
        "split otherwise. Null: the whole validation split of the student's classes.",
    )
    last_batch: Literal["even", "drop", "keep"] = Field(
        "even",
        description="Training batches when batch_size does not divide the images: 'even' spreads them over "
        "ceil(N / batch_size) batches of nearly equal size (none smaller than half a batch), 'drop' drops "
        "the remainder each epoch, 'keep' keeps a smaller last batch (it can hold 1 image: degenerate "
        "BatchNorm statistics and relational terms).",
    )
    unlabeled: Literal["none", "subset", "all"] = Field(
        "none",
        description="Images of the student's pool it is not given labels for, shown to the methods' "
        "label-free distillation terms (a transfer set): 'subset' = those of the student's classes, 'all' = "
        "those of every class. Under student_pool 'customer' they are customer images the teacher never saw; "
        "under 'teacher_train' they are the teacher's own training images. Baselines without a teacher "
        "never see them.",
    )
    unlabeled_batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Unlabelled images per training step; null: batch_size."
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    num_workers: int = Field(
        0, ge=0, le=256, description="DataLoader worker processes (per training process)."
    )
    persistent_workers: bool = Field(
        False,
        description="Keep the loader's worker processes from epoch to epoch (one loader per training stage) "
        "instead of starting them every epoch; each image then carries its own augmentation seed, so the "
        "numbers stay reproducible. Needs num_workers >= 1.",
    )
    pin_memory: bool | None = Field(
        None,
        description="Page-locked host batches, copied to the GPU without blocking the step; null: on when "
        "training on CUDA.",
    )
    augment: Literal["none", "crop", "crop_flip", "resized_crop_flip"] = Field(
        "none",
        description="Training augmentation: random crop (padding 1/8 of the size), optionally with flips "
        "(small images: digits, CIFAR); resized_crop_flip: ImageNet's random-resized crop (8-100 % of the area, "
        "aspect 3/4-4/3) and flips, for large images (224²).",
    )

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        if self.dataset in DATASETS_NEEDING_ROOT:
            if self.root is None:
                raise ValueError(
                    f"root: dataset '{self.dataset}' needs `root`, the local folder that holds it"
                )
            if not self.download and not self.root.exists():
                how = (
                    "an ImageFolder tree: <root>/<class>/<image>"
                    if self.dataset == "imagefolder"
                    else "set `download: true` to let torchvision fetch it"
                )
                raise ValueError(f"root: '{self.root}' does not exist ({how})")
        if self.classes is not None:
            check_unique_classes(self.classes)
            total = KNOWN_NUM_CLASSES.get(self.dataset)
            bad = [c for c in self.classes if c < 0 or (total is not None and c >= total)]
            if bad:
                allowed = f"0..{total - 1}" if total else ">= 0"
                raise ValueError(
                    f"classes: class id {bad[0]} is out of range for '{self.dataset}' (allowed: {allowed})"
                )
        return self

    @property
    def customer(self) -> bool:
        return self.student_pool == "customer"

    @model_validator(mode="after")
    def _check_unlabeled(self) -> DataConfig:
        if self.unlabeled == "subset" and self.per_class is None:
            raise ValueError(
                "unlabeled: 'subset' needs per_class (without it every training image of the student's "
                "classes is already labelled); allowed: 'none', or set per_class"
            )
        if self.unlabeled == "all" and self.per_class is None and self.classes is None:
            raise ValueError(
                "unlabeled: 'all' needs classes or per_class (without them every training image is already "
                "labelled); allowed: 'none'"
            )
        return self

    @model_validator(mode="after")
    def _check_persistent_workers(self) -> DataConfig:
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError(
                "persistent_workers: true needs worker processes, but num_workers is 0; allowed: "
                "num_workers >= 1, or persistent_workers: false"
            )
        return self


# ------------------------------------------------------------------------------------------- training
class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    # Bounded far above any useful value, so that an absurd one is refused here rather than overflowing the
    # optimizer's float32 step after the teacher has trained.
    lr: float = Field(0.05, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam).")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)


class ScheduleConfig(Section):
    name: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        default_factory=list, max_length=100, description="Epochs at which multistep multiplies lr by gamma."
    )
    gamma: float = Field(0.1, gt=0, le=1)
    factors: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None,
        description="Multistep only: the lr factor (relative to the initial lr) from each milestone on, "
        "one per milestone, e.g. [0.1, 0.01, 0.002]; replaces gamma.",
    )
    warmup_epochs: int = Field(
        0, ge=0, le=MAX_EPOCHS, description="Linear warm-up from lr/10 over this many epochs."
    )


class TrainConfig(Section):
    """How one network is trained: used for the teacher (when trained by the run) and for every student."""

    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="Which epoch's weights to keep: the best validation accuracy (ties go to the lower "
        "validation loss), or the last epoch.",
    )
    amp: Literal["bf16", "fp16"] | None = Field(
        None,
        description="Mixed precision: the forward passes under autocast in bf16, or fp16 with a dynamic loss "
        "scale; the weights and the optimizer stay FP32. Meant for CUDA (bf16 also runs on CPUs with AMX); "
        "null: FP32.",
    )
    channels_last: bool = Field(
        False,
        description="NHWC memory layout for the networks and their inputs: faster convolutions on tensor-core "
        "GPUs.",
    )

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainConfig:
        factors = self.schedule.factors
        if factors is not None and len(factors) != len(self.schedule.milestones):
            raise ValueError(
                f"schedule.factors: {shown_value(factors)} has {len(factors)} values; give one per milestone "
                f"({len(self.schedule.milestones)})"
            )
        bad = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(
                f"schedule.milestones: {shown_value(bad)} must lie inside 1..{self.epochs - 1} "
                f"(epochs is {self.epochs})"
            )
        return self


# The teacher's batch when the students are few-shot and teacher.train.batch_size is null: a normal batch,
# not the students' few-shot one (capped by the teacher's training images).
TEACHER_FEW_SHOT_BATCH = 128


class TeacherTrainConfig(TrainConfig):
    """How a teacher trained by the run is trained: the students' training fields, plus how it is fed (its
    data is every training image of its classes, not the students' draw, so its batch is its own)."""

    batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH,
        description="The teacher's training batch. Null: data.batch_size when the students train on their "
        f"whole split (no data.per_class); with few-shot students (data.per_class set), {TEACHER_FEW_SHOT_BATCH} "
        "(or the teacher's training-image count when smaller), not the students' few-shot batch.",
    )
    augment: Literal["none", "crop", "crop_flip", "resized_crop_flip"] | None = Field(
        None, description="The teacher's training augmentation; null: data.augment."
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="DataLoader worker processes for the teacher's training; null: data.num_workers.",
    )

    def resolved_batch_size(self, data: DataConfig, train_images: int) -> int:
        """The batch the teacher trains at (the rule of `batch_size`'s description)."""
        if self.batch_size is not None:
            return self.batch_size
        if data.per_class is None:
            return data.batch_size
        return max(1, min(TEACHER_FEW_SHOT_BATCH, train_images))


# ------------------------------------------------------------------------------------- teacher/student
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


_MS_PER_UNIT = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_milliseconds(value: Any) -> Any:
    """Read '0.5ms', '500us', '2 ms' or 0.5 as milliseconds; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*", value)
        if match:
            number, unit = match.groups()
            return float(number) * _MS_PER_UNIT[unit or "ms"]
    return value


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


# ------------------------------------------------------------------------------------ export/benchmark
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
    int8_max_drop: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="OpenVINO INT8 with NNCF accuracy control: largest allowed top-1 drop on the validation "
        "split (a fraction: 0.01 = one point); unset: plain post-training quantization.",
    )
    max_batch: int = Field(
        64, ge=1, le=MAX_BATCH, description="Largest batch of TensorRT's dynamic-batch profile."
    )
    parity: ParityConfig = ParityConfig()

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


# ---------------------------------------------------------------------------------------- the run
class ReportConfig(Section):
    plots: bool = Field(True, description="Draw the report's plots (matplotlib, PNG).")
    loss_curves: bool = Field(
        True,
        description="Plot every student's per-epoch training and validation cross-entropy, so methods with and "
        "without a distillation term compare on the same loss (SKD paper, Fig. 5).",
    )
    embedding: bool = Field(
        False,
        description="Plot a 2-D t-SNE of the penultimate features on the test split of the main student and "
        "of `scratch` when it is a baseline (SKD paper, Fig. 6).",
    )
    embedding_points: int = Field(
        1000, ge=10, le=MAX_IMAGES, description="Test images in the embedding plot, at most."
    )
    reference: str | None = Field(
        None,
        description="The baseline every student is compared with, seed by seed (paired differences of test "
        "accuracy with a confidence interval). Null: `scratch` when it is trained.",
    )
    interval: Literal["t", "bootstrap"] = Field(
        "t",
        description="Interval of the mean paired difference: Student's t over seeds (default; honest with "
        "few seeds) or a percentile bootstrap over seeds (too narrow below ~10 seeds).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the paired intervals.")
    correction: Literal["none", "holm"] = Field(
        "none",
        description="Multiple comparisons: a table compares every student with the reference. 'holm' gives "
        "verdicts by Holm's step-down over the table's comparisons (the chance of any false verdict stays at "
        "1 - confidence); 'none' judges each comparison alone. The report states how many comparisons the "
        "table makes either way.",
    )


# The training fields a stage of a method's plan may change (`distill.stages`).
STAGE_TRAIN_FIELDS = ("epochs", "optimizer", "schedule", "grad_clip")


def stage_train_config(base: TrainConfig, changes: dict[str, Any] | None) -> TrainConfig:
    """`base` with a stage's changes merged in field by field (`optimizer: {lr: 0.01}` keeps the rest of
    the optimizer); an optimizer or schedule of another `name` replaces the recipe's whole (Adam inherits
    no SGD momentum, a constant schedule no milestones). Raises ValueError naming the field when the result
    is not a valid training section."""
    if not changes:
        return base
    unknown = sorted(set(changes) - set(STAGE_TRAIN_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: a stage cannot change it (allowed: {', '.join(STAGE_TRAIN_FIELDS)})")
    merged = base.model_dump()
    for section in ("optimizer", "schedule"):
        change = changes.get(section)
        if (
            isinstance(change, dict)
            and change.get("name", merged[section]["name"]) != merged[section]["name"]
        ):
            merged[section] = {}  # another kind: its own defaults, not the recipe's other kind's values
    merged = _deep_merge(merged, changes)
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise ValueError(f"{field}: {message}") from None


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# The `distill:` section has one options block per registered method, so the schema shows them all.
class DistillConfig(distill_section_model()):  # type: ignore[misc]
    stages: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="Per method (or variant) and stage of its plan, changes to the recipe's `train:` section "
        "for that stage alone: epochs, optimizer, schedule, grad_clip, merged field by field, e.g. "
        "{fitnet: {hint: {optimizer: {lr: 0.01}, schedule: {name: constant}}}}. `edgekd list methods` names "
        "each method's stages. epochs given here replace what the method's plan gives the stage.",
    )
    artifacts: dict[str, dict[str, LoosePath]] = Field(
        default_factory=dict,
        description="Per method (or variant), artifacts to load from another run instead of producing them, "
        "e.g. {refilled: {embedding: runs/other/train/refilled/embedding/artifacts/embedding.pt}}; "
        "'{seed}' in a path is replaced by each student seed. The stage that produces them is skipped. "
        "`edgekd list methods` names each method's artifacts.",
    )


class DistributedConfig(Section):
    """Data-parallel training (torchrun; `edgekd build --nproc N`). data.batch_size and
    data.unlabeled_batch_size are global: each step's batch is split evenly over the processes, so N processes
    train on the same batches as one."""

    sync_batchnorm: bool = Field(
        True,
        description="BatchNorm statistics over the global batch (PyTorch's SyncBatchNorm on CUDA, an all-reduce "
        "of the statistics on the CPU) rather than each process's share.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend; auto: NCCL on CUDA, gloo on the CPU."
    )
    timeout_s: int = Field(
        1800, ge=30, le=86_400, description="How long a process waits for the others at a collective."
    )


class Recipe(Section):
    name: str = Field(
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name: the run folder is output_dir/name.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds initialization, data order and augmentation.")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None,
        min_length=1,
        max_length=1_000,
        description="Train every student once per seed and report mean ± std (the teacher is trained "
        "once, with `seed`; the data split stays fixed by data.split_seed). Unset: just `seed`.",
    )
    output_dir: LoosePath = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses a CUDA GPU when one is present."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description="PyTorch CPU threads for training and evaluation (recorded in metrics.json); null: "
        "PyTorch's default. Results are bit-exact for one thread count on one machine; another thread count "
        "or CPU changes the float rounding, hence the numbers (see the README).",
    )
    mode: Literal["deterministic", "speed"] = Field(
        "deterministic",
        description="deterministic: cuDNN autotuning off and deterministic algorithms on, so the same recipe "
        "and seed give the same numbers on one machine; speed: autotuned, non-deterministic kernels (faster "
        "on GPUs; numbers vary from run to run, and the report says so).",
    )
    distributed: DistributedConfig = Field(
        DistributedConfig(),
        description="Data-parallel training, read only under torchrun (edgekd build --nproc).",
    )
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig = DistillConfig()  # type: ignore[valid-type]
    train: TrainConfig = Field(TrainConfig(), description="How the students are trained.")
    export: ExportConfig = ExportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    report: ReportConfig = ReportConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def latency_budget(self) -> LatencyBudgetConfig | None:
        budget = self.student.budget
        return budget.latency if budget else None

    @property
    def latency_threads(self) -> int | None:
        """The thread count a latency budget is measured at: its own, else the benchmark section's."""
        budget = self.latency_budget
        if budget is None:
            return None
        return budget.threads if budget.threads is not None else self.benchmark.threads

    @property
    def latency_cache_dir(self) -> Path:
        budget = self.latency_budget
        return budget.cache_dir if budget and budget.cache_dir else self.output_dir / "latency_cache"

    @property
    def student_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @model_validator(mode="after")
    def _check_seeds(self) -> Recipe:
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {shown_value(self.seeds)} names a seed twice")
        return self

    @property
    def normalization(self) -> str | NormalizeStats:
        """data.normalize with `auto` resolved: what the data is normalized with."""
        chosen = self.data.normalize
        if chosen != "auto":
            return chosen
        if self.teacher.model.startswith(("torchvision:", "timm:")):
            return "imagenet"
        return "train" if self.data.dataset == "imagefolder" else "dataset"

    @model_validator(mode="after")
    def _check_output_dir(self) -> Recipe:
        """The run folder must be creatable: no file where output_dir, one of its parents or the run folder is."""
        for path in (self.run_dir, *self.run_dir.parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(
                        f"output_dir: '{path}' is a file; allowed: a folder (created when missing)"
                    )
                break
        return self

    @model_validator(mode="after")
    def _check_stage_changes(self) -> Recipe:
        """Methods named in distill.stages/artifacts are trained by this recipe, and every stage's changed
        training section is valid (the stage names are checked against the plans when the run is prepared)."""
        trained = [self.distill.method, *self.distill.baselines]
        for section in ("stages", "artifacts"):
            for method in getattr(self.distill, section):
                if method not in trained:
                    raise ValueError(
                        f"distill.{section}.{method}: '{method}' is not trained by this recipe "
                        f"(allowed: {', '.join(trained)})"
                    )
        for method, stages in self.distill.stages.items():
            for stage, changes in stages.items():
                try:
                    stage_train_config(self.train, changes)
                except ValueError as exc:
                    raise ValueError(f"distill.stages.{method}.{stage}.{exc}") from None
        return self

    @model_validator(mode="after")
    def _check_export_models(self) -> Recipe:
        chosen = self.export.models
        if isinstance(chosen, str):
            return self
        trained = [self.distill.method, *self.distill.baselines]
        for index, name in enumerate(chosen):
            if name not in trained:
                raise ValueError(
                    f"export.models.{index}: '{name}' is not trained by this recipe (allowed: {', '.join(trained)})"
                )
        if not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"export.models: {shown_value(chosen)} must name each method once, at least one "
                "(or give best_val, main or all)"
            )
        return self

    @model_validator(mode="after")
    def _check_reference(self) -> Recipe:
        reference = self.report.reference
        trained = [self.distill.method, *self.distill.baselines]
        if reference is not None and reference not in trained:
            raise ValueError(
                f"report.reference: '{reference}' is not trained by this recipe (allowed: {', '.join(trained)})"
            )
        return self


# ------------------------------------------------------------------------------------------ loading
def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; any problem is a RecipeError naming the field."""
    raw = read_recipe_yaml(Path(path))
    for override in overrides:
        apply_override(raw, override)
    return validate_recipe(raw, source=str(path))


def read_recipe_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError("", f"recipe file '{path}' does not exist")
    try:
        raw = read_yaml_file(path)
    except YamlRefused as exc:
        raise RecipeError("", f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise RecipeError("", f"{path}: not valid YAML{line} ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raise RecipeError("", f"{path}: the recipe is empty; allowed: a mapping of sections (see recipes/)")
    if not isinstance(raw, dict):
        raise RecipeError("", f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is read as YAML (so 0.1, [1, 2], null work)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError("--set", f"'{override}' is not of the form section.field=value")
    try:
        value = load_yaml_text(text)
    except YamlRefused as exc:
        raise RecipeError(key.strip(), f"--set value refused: {exc}") from None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(key, f"cannot set a field inside '{part}', which holds {child!r}")
        node = child
    node[parts[-1]] = value


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(*describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    """The first error as (field path, 'what was given, what is allowed'); the count of the others is added."""
    # An unknown key first: a misspelt field explains the "is required" of the field it was meant to be.
    errors = sorted(exc.errors(include_url=False), key=lambda error: error["type"] != "extra_forbidden")
    first = errors[0]
    # pydantic marks a rejected dict key with a '[key]' step: the key itself is the path's last step
    loc = [str(p) for p in first["loc"] if p != "[key]"]
    field = ".".join(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        message = f"unknown field ({hint}allowed here: {', '.join(allowed)})"
    elif kind == "missing":
        message = "is required"
    elif kind.startswith("value_error"):
        field, message = _split_field_prefix(field, first["msg"].removeprefix("Value error, "))
    else:
        message = f"got {shown_value(first.get('input'))}: {lower_first(first['msg'])}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return field, message


def _split_field_prefix(field: str, message: str) -> tuple[str, str]:
    """Section validators start their message with the sub-field they blame ('classes: ...'): move it to the path."""
    match = re.match(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$", message)
    if match:
        sub, message = match.groups()
        field = f"{field}.{sub}" if field else sub
    return field or "recipe", message


def _allowed_fields(loc: list[str]) -> list[str]:
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _section_type(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def recipe_json_schema() -> dict[str, Any]:
    return Recipe.model_json_schema()


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
