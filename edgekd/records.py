"""metrics.json as typed records: what a run measured, written once by the pipeline and read back by the
report, the CLI's summary and `edgekd export/bench` on a run folder.

One serialisation: `RunMetrics.model_dump(mode="json")` writes metrics.json and `RunMetrics.load` reads it
back (checked: a key this version does not know is an error naming it, not a silent miss). Accuracies are
percentages rounded to 4 decimals; fields that do not apply to a record are null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import EdgekdError


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LabelUse(Record):
    """Labelled images a model learnt from: for training, and for choosing its epoch (none with `last`)."""

    train: int
    selection: int


class DataUse(Record):
    """The images one stage read: labelled for training, labelled for selection, unlabelled.

    `labelled_selection` counts images of the validation split only. A stage that holds out part of the
    training images for its own use (DistPro's search: its hyper-gradient's images) counts them among
    `labelled_train`, and how many of those it held out in `held_out`."""

    labelled_train: int
    labelled_selection: int
    unlabeled: int
    held_out: int = 0


class StageArtifact(Record):
    """A named file a stage produced (or a later stage consumed), e.g. a trained embedding or a dictionary."""

    name: str
    path: str
    sha256: str
    # "produced" by this run, or "loaded" from the path a recipe named (another run's artifact)
    origin: Literal["produced", "loaded"] = "produced"


class StageRecord(Record):
    """One stage of a method's plan for one seed."""

    stage: str
    epochs: int
    select: str
    best_epoch: int | None
    best_val_acc: float | None
    best_score: float | None
    trained_params: int
    extra_params: int
    train_time_s: float
    data: DataUse | None = None
    produces: list[StageArtifact] = []
    consumes: list[StageArtifact] = []
    # Why the stage did not train (its artifacts were loaded from another run), else null.
    skipped: str | None = None
    # What the objective says it did, and numbers of its selected state (Distiller.stage_notes/_measures).
    notes: str = ""
    measures: dict[str, float] = {}
    # A side branch (a check of the student as handed on, plan.py): it hands nothing on; its test accuracy.
    branch: bool = False
    test_acc: float | None = None


class SeedRun(Record):
    """One seed of a model trained (or probed) over several seeds."""

    seed: int
    val_acc: float
    test_acc: float
    test_loss: float | None = None
    test_nmi: float | None = None
    best_epoch: int | None = None
    checkpoint: str | None = None
    stages: list[StageRecord] = []
    logreg_c: float | None = None  # teacher_logreg: the regularisation chosen on the validation split


class PairedDifference(Record):
    """A model's per-seed test accuracy minus the reference baseline's, with its interval (report/stats.py)."""

    reference: str
    metric: str
    seeds: list[int]
    differences: list[float]
    mean: float
    std: float | None
    confidence: float
    interval_method: Literal["t", "bootstrap"]
    interval: list[float] | None
    excludes_zero: bool
    verdict: str
    p_value: float | None = None
    # the table's family: how many students it compares with the reference, and the correction applied
    comparisons: int = 1
    correction: Literal["none", "holm"] = "none"
    adjusted_p_value: float | None = None


class ModelRecord(Record):
    """A model of the run: the teacher, a trained student (one per method), or a probe of the teacher.

    With several seeds the accuracies are means over seeds, `*_std` their sample standard deviations and
    `per_seed` every seed's own figures."""

    name: str
    role: Literal["teacher", "student", "probe"]
    arch: str
    model_args: dict[str, Any]
    params: int
    flops: int | None  # None: not counted (a teacher given as an ONNX file)
    val_acc: float
    test_acc: float
    test_loss: float | None = None
    test_nmi: float | None = None
    val_acc_std: float | None = None
    test_acc_std: float | None = None
    test_loss_std: float | None = None
    test_nmi_std: float | None = None
    fits_budget: bool | None = None
    checkpoint: str | None = None
    best_epoch: int | None = None
    per_seed: list[SeedRun] = []
    labelled_images: LabelUse | None = None
    unlabeled_images: int = 0
    uses_teacher: bool | None = None
    paired: PairedDifference | None = None
    # students
    method: str | None = None
    options: dict[str, Any] | None = None
    is_main: bool = False
    extra_training_params: int = 0
    arch_source: str | None = None
    train_time_s: float | None = None
    stages: list[StageRecord] = []
    # the teacher: how it was obtained, and its accuracy on the student's task (null where that has no
    # meaning: none of the student's classes among its own)
    source: str | None = None
    # A loaded teacher (source "checkpoint" or "file"): what the recipe states it was trained on (teacher.trained_on);
    # null: not stated, and the run cannot know it.
    trained_on: str | None = None
    student_task_val_acc: float | None = None
    student_task_test_acc: float | None = None


class ArtifactRecord(Record):
    """Everything measured about one deployable model (the PyTorch student included)."""

    name: str
    format: str
    precision: str
    path: str | None
    # The student it deploys (its method's name); null in metrics.json written before several could be.
    model: str | None = None
    size_bytes: int | None
    status: str  # "ok", "parity failed", or "not built: <why>"
    # What ran its parity, accuracy and latency (Runner.runs_on): "onnxruntime CUDA EP", "openvino cpu"...;
    # null where nothing ran it (not built) or in metrics.json written before it was recorded.
    runs_on: str | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    test_acc_drop: float | None = None
    parity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    details: dict[str, Any] = {}

    @property
    def built(self) -> bool:
        return self.status.startswith(("ok", "parity"))


class Int8PathRecord(Record):
    """One way the INT8 artifacts of a student were made and checked (ptq, accuracy_control, qat, qad)."""

    path: str
    # per INT8 artifact ("onnx int8"): val_acc, test_acc, val_drop and test_drop (points against the PyTorch
    # student), the validation verdict and, when it failed, why
    artifacts: dict[str, dict[str, Any]]
    passed_on_validation: bool
    # the quantization-aware stage (qat/qad): epochs, rate, what was kept, validation accuracies, time
    stage: dict[str, Any] | None = None


class Int8Record(Record):
    """How one deployed student's INT8 artifacts were quantized: the recipe's export.int8.mode, every path
    tried, which one shipped and why. Paths are judged on the validation split (auto chooses on it); the
    build's gate (the artifacts' parity records) judges the shipped artifacts as every artifact is judged."""

    model: str
    mode: str
    shipped_path: str
    why: str
    paths: list[Int8PathRecord]
    # formats whose INT8 stayed post-training quantization under qat/qad, with why
    ptq_only: dict[str, str] = {}


class RunRecord(Record):
    name: str
    seed: int
    student_seeds: list[int]
    device: str
    wall_time_s: float
    resumed: bool
    # deterministic | speed (recipe `mode`): whether the numbers repeat on this machine
    mode: str = "deterministic"
    # a torchrun data-parallel run: processes, backend, SyncBatchNorm, what data.batch_size means
    distributed: dict[str, Any] | None = None


class Candidate(Record):
    """One member of the student family as latency sizing saw it (a row of the candidate table)."""

    member: str  # "resnet8 with width=16"
    model: str
    model_args: dict[str, Any]
    params: int
    flops: int  # of one image
    latency_ms: float | None  # the budget's statistic at the budget's batch; null when not timed
    timings_ms: dict[str, float] = {}  # p50/p90/p99 when timed
    # measured now, read from the latency cache, inferred from a timed member it dominates or is dominated
    # by (depth and width both >= / <=), skipped (over the parameter budget), or not needed (smaller than
    # the answer and bounded by no timing)
    source: Literal["measured", "cached", "inferred", "skipped", "not needed"]
    fits: bool | None
    note: str = ""
    proxy_val_acc: float | None = None  # rule `proxy`: validation accuracy after its short training


class Sizing(Record):
    """How the student was sized to a latency budget: the target, the rule, every candidate, the choice."""

    target: dict[str, Any]  # backend, precision, batch, threads, statistic, limit_ms
    rule: Literal["largest", "proxy"]
    chosen: str
    candidates: list[Candidate]
    measured: int
    cached: int
    inferred: int
    time_s: float
    cache_file: str | None
    fingerprint: dict[str, Any]


class StudentChoice(Record):
    arch: str
    model_args: dict[str, Any]
    params: int
    flops: int
    how: str
    sizing: Sizing | None = None  # a latency budget's candidate table


class LatencyCheck(Record):
    """The shipped artifact's measured latency against ``student.budget.latency``."""

    artifact: str  # "openvino int8"
    statistic: Literal["p50", "p90", "p99"]
    batch: int
    threads: int | None
    limit_ms: float
    measured_ms: float | None  # null when the artifact could not be built or timed here
    predicted_ms: float | None  # what sizing measured on the same architecture with random weights
    fits: bool | None
    verdict: str  # "fits", "OVER by 12.3 %", or why it was not measured


class BudgetCheck(Record):
    """The deployed student against every limit the recipe set; ``fits`` is all of them."""

    params: int
    budget: int | None = None  # the parameter limit; null when only latency is bounded
    params_fit: bool | None = None
    latency: LatencyCheck | None = None
    fits: bool | None


class ShippedStudent(Record):
    """Which student the run deploys and why (export.models), and every student it exported."""

    model: str  # the method whose student is shipped
    seed: int  # whose weights: the first student seed's
    rule: str  # export.models as given: best_val, main, all or the list
    reason: str  # in words, with the validation accuracies it was chosen on
    exported: list[str]  # every method whose student was exported (the shipped one first)


class RunMetrics(Record):
    """metrics.json."""

    run: RunRecord
    environment: dict[str, Any]
    # data.teacher / data.student: each view's summary (DataBundle.summary) and what the teacher knew of it
    data: dict[str, dict[str, Any]]
    budget: dict[str, Any]  # params: the limit or null; latency: the latency budget or null
    student_choice: StudentChoice
    models: list[ModelRecord]
    artifacts: list[ArtifactRecord]
    budget_check: BudgetCheck | None = None
    # null in metrics.json written before edgekd chose the student to ship: the main method's was
    shipped: ShippedStudent | None = None
    # one per deployed student with INT8 artifacts: how they were quantized (empty before export.int8)
    int8: list[Int8Record] = []
    warnings: list[str] = []  # what a user should know before deploying (edgekd/shipping.py)

    @property
    def main(self) -> ModelRecord:
        """The main method's student."""
        return next(record for record in self.models if record.is_main)

    @property
    def deployed(self) -> ModelRecord:
        """The student the run ships (the main method's in metrics.json that does not say)."""
        if self.shipped is None:
            return self.main
        return next(record for record in self.models if record.name == self.shipped.model)

    @property
    def student_data(self) -> dict[str, Any]:
        return self.data["student"]

    @property
    def teacher_data(self) -> dict[str, Any]:
        return self.data.get("teacher") or {}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def load(cls, path: Path) -> RunMetrics:
        import json

        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except RecursionError:
            raise EdgekdError(f"{path}: nested too deeply to be a metrics.json of edgekd") from None
        except (ValueError, ValidationError) as exc:
            raise EdgekdError(
                f"{path}: not a metrics.json of this edgekd version ({_first_problem(exc)})"
            ) from None


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False)[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    return str(exc).splitlines()[0]
