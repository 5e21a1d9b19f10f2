"""The deployment stages of `edgekd build`: export the students to ship, check every artifact, measure it.

Export writes each artifact the recipe asks for; the parity gate runs every artifact and the PyTorch student
on the same real validation images; accuracy runs each artifact on the whole validation and test splits
through its own runner; the latency harness times the PyTorch student and each artifact on one machine with
one thread count. Everything lands in one record per artifact, which the report turns into tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from edgekd.bench import (
    ParityError,
    ParityTolerance,
    Runner,
    TorchRunner,
    check_parity,
    measure_latency,
)
from edgekd.config.deploy import QUANTIZATION_AWARE, BenchmarkConfig, ExportConfig, ParityConfig
from edgekd.data import DataBundle
from edgekd.errors import EdgekdError
from edgekd.exporters import Artifact, Exporter, ExportOptions, ModelIO, get_exporter
from edgekd.formats import FORMATS, PRECISIONS
from edgekd.int8.paths import path_order, path_record, shipped_reason
from edgekd.preflight import check_onnxruntime_device
from edgekd.records import ArtifactRecord, Int8Record
from edgekd.runtime import accuracy, artifact_runner, logits_of, model_io, split_arrays

if TYPE_CHECKING:
    from edgekd.int8.stage import QuantizationAwareResult

# NNCF imports torch.utils.cpp_extension, which warns about a missing CUDA runtime on a CUDA build of torch
# without a GPU: irrelevant to CPU export, and noise in every build log.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@dataclass
class EvalData:
    """Real images, already normalized, as the deployed model is fed them."""

    calibration: np.ndarray
    parity_images: np.ndarray
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def evaluation_data(data: DataBundle, export: ExportConfig) -> EvalData:
    calibration, _ = split_arrays(data, "train", export.calibration_images)
    val = split_arrays(data, "val")
    return EvalData(calibration, val[0][: export.parity.images], val, split_arrays(data, "test"))


# ----------------------------------------------------------------------------------------------- export
def export_targets(export: ExportConfig, also: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """(format, precision) pairs to write, in edgekd.formats' order (the FP32 ONNX first, so that TensorRT
    can be built from it); ``also`` is one more the run needs (the latency budget's target)."""
    wanted = {(name, precision) for name, precisions in export.targets.items() for precision in precisions}
    if also is not None:
        wanted.add(also)
    return [(name, precision) for name in FORMATS for precision in PRECISIONS if (name, precision) in wanted]


def export_options(export: ExportConfig, path: str = "ptq") -> ExportOptions:
    """The exporters' settings for one INT8 path (NNCF's accuracy control on the accuracy_control path)."""
    return ExportOptions(
        opset=export.opset,
        max_batch=export.max_batch,
        calibration_size=export.calibration_images,
        calibration_method=export.calibration_method,
        int8_max_drop=export.int8.max_drop if path == "accuracy_control" else None,
    )


def path_applies(format_name: str, path: str) -> bool:
    """Whether an INT8 path changes a format's artifact: PTQ makes every format's; accuracy control the
    formats whose exporter takes `int8_max_drop` (the catalog says which); QAT/QAD those that export the
    quantization-aware student's own quantizers."""
    if path == "ptq":
        return True
    if path == "accuracy_control":
        return "int8_max_drop" in FORMATS[format_name].export_options
    return get_exporter(format_name).exports_fake_quantized


def export_all(
    student: nn.Module,
    io: ModelIO,
    export: ExportConfig,
    evaluation: EvalData,
    out_dir: Path,
    stem: str,
    also: tuple[str, str] | None = None,
    *,
    path: str = "ptq",
    fake_quantized: nn.Module | None = None,
    targets: list[tuple[str, str]] | None = None,
    onnx_fp32: Artifact | None = None,
) -> tuple[list[Artifact], list[ArtifactRecord]]:
    """Write every artifact (or `targets`), the INT8 ones by `path` where it applies to their format (PTQ
    elsewhere); one an exporter cannot build here (TensorRT without TensorRT and a GPU) becomes a 'not built'
    record with what the target builds it from and the command that does."""
    built: list[Artifact] = []
    not_built: list[ArtifactRecord] = []
    onnx_by_precision: dict[str, Artifact] = {"fp32": onnx_fp32} if onnx_fp32 is not None else {}
    options = export_options(export, path)
    for format_name, precision in targets if targets is not None else export_targets(export, also):
        exporter = get_exporter(format_name)
        made_by = path if precision == "int8" and path_applies(format_name, path) else "ptq"
        calibration = evaluation.calibration if precision == "int8" else None
        if exporter.cannot_build_here() is not None:
            record, source = not_built_record(
                exporter,
                student,
                io,
                precision,
                options,
                calibration,
                onnx_by_precision.get("fp32"),
                out_dir,
                stem,
            )
            if (source.format, source.precision) == ("onnx", "fp32"):  # it serves the next exports too
                onnx_by_precision.setdefault("fp32", source)
            not_built.append(record)
            continue
        artifact = exporter.export(
            student,
            io,
            precision,
            out_dir,
            options=options,
            calibration=calibration,
            validation=evaluation.val if precision == "int8" else None,
            onnx_fp32=onnx_by_precision.get("fp32"),
            stem=stem,
            fake_quantized=fake_quantized if made_by in QUANTIZATION_AWARE else None,
        )
        if precision == "int8":
            artifact.details["int8_path"] = made_by
        if format_name == "onnx":
            onnx_by_precision[precision] = artifact
        built.append(artifact)
    return built, not_built


def not_built_record(
    exporter: Exporter,
    student: nn.Module,
    io: ModelIO,
    precision: str,
    options: ExportOptions,
    calibration: np.ndarray | None,
    onnx_fp32: Artifact | None,
    out_dir: Path,
    stem: str,
) -> tuple[ArtifactRecord, Artifact]:
    """Where the artifact cannot be built here: write what the target builds it from, and record how."""
    build = exporter.prepare_for_target(
        student,
        io,
        precision,
        out_dir,
        options=options,
        calibration=calibration,
        onnx_fp32=onnx_fp32,
        stem=stem,
    )
    record = ArtifactRecord(
        name=f"{exporter.format} {precision}",
        format=exporter.format,
        precision=precision,
        path=None,
        size_bytes=None,
        status=f"not built: {build.reason}; build it on the target with the {build.tool} command",
        details={build.tool: build.command, build.source.format: str(build.source.path)},
    )
    return record, build.source


# ------------------------------------------------------------------------------------------ evaluation
def tolerance_for(precision: str, parity: ParityConfig) -> ParityTolerance:
    if precision == "fp32":
        return ParityTolerance(max_abs=parity.fp32_max_abs, min_top1=None)
    if precision == "fp16":
        return ParityTolerance(max_abs=parity.fp16_max_abs, min_top1=parity.fp16_min_top1)
    return ParityTolerance(max_abs=None, min_top1=parity.int8_min_top1)


def check_artifact(
    artifact: Artifact,
    runner: Runner,
    reference: dict[str, np.ndarray],
    evaluation: EvalData,
    parity: ParityConfig,
    student_test_acc: float,
) -> ArtifactRecord:
    """Parity on the parity images, then accuracy on val and test, through the artifact's own runner."""
    runner.load()
    outputs = logits_of(runner, evaluation.parity_images)
    result = check_parity(
        reference["parity"], outputs, artifact.precision, tolerance_for(artifact.precision, parity)
    )
    test_acc = accuracy(logits_of(runner, evaluation.test[0]), evaluation.test[1])
    drop = round(student_test_acc - test_acc, 4)
    failure = artifact_failure(result, artifact.precision, drop, parity)
    return ArtifactRecord(
        name=f"{artifact.format} {artifact.precision}",
        format=artifact.format,
        precision=artifact.precision,
        path=str(artifact.path),
        size_bytes=artifact.size_bytes,
        runs_on=runner.runs_on(),
        status="ok" if failure is None else "parity failed",
        val_acc=accuracy(logits_of(runner, evaluation.val[0]), evaluation.val[1]),
        test_acc=test_acc,
        test_acc_drop=drop,
        # One verdict: `passed` is the same check that fails the build (logit parity and the INT8 accuracy
        # gate), not the logit check alone.
        parity={
            **result.to_dict(),
            "logits_passed": result.passed,
            "passed": failure is None,
            "failure": failure,
        },
        details=dict(artifact.details),
    )


def artifact_failure(result, precision: str, drop: float, parity: ParityConfig) -> str | None:
    """Why an artifact fails its checks (logit parity, then the INT8 accuracy gate), or None."""
    if result.failure is not None:
        return result.failure
    if precision == "int8" and drop > parity.int8_max_acc_drop:
        return f"test accuracy drop {drop:.2f} pt > int8_max_acc_drop {parity.int8_max_acc_drop:.2f} pt"
    return None


def pytorch_record(
    student: nn.Module, runner: TorchRunner, evaluation: EvalData, params: int
) -> ArtifactRecord:
    runner.load()
    return ArtifactRecord(
        name="pytorch fp32",
        format="pytorch",
        precision="fp32",
        path=None,
        size_bytes=params * 4,
        runs_on=runner.runs_on(),
        status="ok",
        val_acc=accuracy(logits_of(runner, evaluation.val[0]), evaluation.val[1]),
        test_acc=accuracy(logits_of(runner, evaluation.test[0]), evaluation.test[1]),
        test_acc_drop=0.0,
    )


# --------------------------------------------------------------------------------------------- latency
def time_runners(
    runners: Iterable[tuple[ArtifactRecord, Callable[[], Runner]]],
    io: ModelIO,
    bench: BenchmarkConfig,
    progress,
) -> None:
    for record, make_runner in runners:
        if progress is not None:
            progress(record.name)
        # The benchmark section is the harness's latency settings (plus `enabled`): handed over as it is.
        record.latency = measure_latency(make_runner(), io.image_shape, bench).to_dict()


# ----------------------------------------------------------------------------------------------- stage
@dataclass(frozen=True)
class QuantizationAwareSource:
    """What deployment calls when an INT8 path needs the quantization-aware student: `train(mode)` runs (or
    resumes) the stage for 'qat' or 'qad' and returns its result; `teacher_teaches` says whether the teacher
    predicts the student's classes (QAD needs it)."""

    train: Callable[[str], QuantizationAwareResult]
    teacher_teaches: bool
    # what `train` ran, by mode (filled as it runs): the build plots each stage's history
    results: dict[str, QuantizationAwareResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """One student's deployable models (the PyTorch student first) and how its INT8 ones were quantized."""

    records: list[ArtifactRecord]
    int8: Int8Record | None


def deploy(
    student: nn.Module,
    params: int,
    data: DataBundle,
    export: ExportConfig,
    bench: BenchmarkConfig,
    out_dir: Path,
    stem: str,
    say=None,
    also: tuple[str, str] | None = None,
    quantization_aware: QuantizationAwareSource | None = None,
) -> Deployment:
    """Export, check and measure one student; ``also`` is a (format, precision) to export beyond the
    recipe's targets (the latency budget's). The INT8 artifacts follow export.int8.mode (edgekd.int8.paths);
    a mode that trains needs ``quantization_aware`` (the build gives it; `edgekd export` cannot).

    The records' parity verdicts say which artifacts are outside their tolerance (the caller raises)."""
    device = bench.onnxruntime_device
    targets = export_targets(export, also)
    if any(format_name == "onnx" for format_name, _ in targets):
        check_onnxruntime_device(device)  # before anything is exported
    int8_targets = [target for target in targets if target[1] == "int8"]
    order = path_order(
        export.int8.mode, quantization_aware is not None and quantization_aware.teacher_teaches
    )
    if int8_targets and quantization_aware is None and order[0] in QUANTIZATION_AWARE:
        raise EdgekdError(
            f"export.int8.mode: {order[0]} trains the student with its teacher and data, which only "
            "`edgekd build` holds; here give --set export.int8.mode=ptq (or accuracy_control)"
        )
    student = student.to("cpu").eval()
    evaluation = evaluation_data(data, export)
    torch_runner = TorchRunner(student, threads=bench.threads)
    student_record = pytorch_record(student, torch_runner, evaluation, params)
    run = DeployRun(
        student,
        model_io(data),
        export,
        bench,
        evaluation,
        out_dir,
        stem,
        also,
        say,
        quantization_aware,
        student_record,
        logits_of(torch_runner, evaluation.parity_images),
    )
    checked, stage = run.export_checked(order[0])
    int8 = None
    if int8_targets:
        checked, int8 = walk_int8_paths(run, order, int8_targets, checked, stage)
    if bench.enabled:
        run.time(checked)
    return Deployment([student_record] + [record for record, _ in checked], int8)


def walk_int8_paths(
    run: DeployRun,
    order: list[str],
    int8_targets: list[tuple[str, str]],
    checked: list[tuple[ArtifactRecord, Artifact | None]],
    stage: dict | None,
) -> tuple[list[tuple[ArtifactRecord, Artifact | None]], Int8Record]:
    """After the first path's artifacts are checked: while the last path fails on validation, the next one
    remakes the INT8 artifacts it applies to (auto); returns the artifacts as they end and the record."""
    export = run.export
    tried = [path_record(order[0], int8_checked(checked), run.student_record, export.parity, stage)]
    fp32_onnx = next(
        (a for _, a in checked if a is not None and (a.format, a.precision) == ("onnx", "fp32")), None
    )
    for path in order[1:]:
        if tried[-1].passed_on_validation:
            break
        redo = [target for target in int8_targets if path_applies(target[0], path)]
        if not redo or (path in QUANTIZATION_AWARE and run.quantization_aware is None):
            continue  # it changes none of the INT8 formats asked for, or cannot train here
        if run.say is not None:
            run.say(f"int8: {path}")
        again, stage = run.export_checked(path, redo, fp32_onnx)
        replaced = {record.name for record, _ in again}
        checked = [item for item in checked if item[0].name not in replaced] + again
        tried.append(path_record(path, int8_checked(checked), run.student_record, export.parity, stage))
    record = Int8Record(
        model=run.stem,
        mode=export.int8.mode,
        shipped_path=tried[-1].path,
        why=shipped_reason(export.int8.mode, tried),
        paths=tried,
        ptq_only=ptq_only_formats(int8_targets, tried),
    )
    return checked, record


@dataclass
class DeployRun:
    """One student's deployment: what every export and check of it shares."""

    student: nn.Module
    io: ModelIO
    export: ExportConfig
    bench: BenchmarkConfig
    evaluation: EvalData
    out_dir: Path
    stem: str
    also: tuple[str, str] | None
    say: Callable[[str], None] | None
    quantization_aware: QuantizationAwareSource | None
    student_record: ArtifactRecord
    student_logits: np.ndarray  # the PyTorch student's logits of the parity images

    def export_checked(
        self, path: str, targets: list[tuple[str, str]] | None = None, fp32_onnx: Artifact | None = None
    ) -> tuple[list[tuple[ArtifactRecord, Artifact | None]], dict | None]:
        """Export `targets` (default: all) with INT8 `path` and check each artifact; with the stage's record
        when the path trained one. An artifact of the quantization-aware student is compared with that
        student (what it is an export of); its accuracy drop is still counted from the FP32 student."""
        stage, fake, fake_logits = None, None, None
        if path in QUANTIZATION_AWARE:
            result = self.quantization_aware.train(path)
            fake, stage = result.fake_quantized.model, result.record
            fake_logits = logits_of(
                TorchRunner(fake, threads=self.bench.threads), self.evaluation.parity_images
            )
        built, not_built = export_all(
            self.student,
            self.io,
            self.export,
            self.evaluation,
            self.out_dir,
            self.stem,
            self.also,
            path=path,
            fake_quantized=fake,
            targets=targets,
            onnx_fp32=fp32_onnx,
        )
        checked: list[tuple[ArtifactRecord, Artifact | None]] = []
        for artifact in built:
            if self.say is not None:
                self.say(f"checking {artifact.format} {artifact.precision}")
            from_fake = artifact.details.get("int8_path") in QUANTIZATION_AWARE
            record = check_artifact(
                artifact,
                artifact_runner(artifact, self.bench.threads, self.bench.onnxruntime_device),
                {"parity": fake_logits if from_fake else self.student_logits},
                self.evaluation,
                self.export.parity,
                self.student_record.test_acc or 0.0,
            )
            record.parity = {
                **(record.parity or {}),
                "reference": f"the {path} fake-quantized student" if from_fake else "the pytorch student",
            }
            checked.append((record, artifact))
        return checked + [(record, None) for record in not_built], stage

    def time(self, checked: list[tuple[ArtifactRecord, Artifact | None]]) -> None:
        bench, device = self.bench, self.bench.onnxruntime_device
        timed = [(self.student_record, lambda: TorchRunner(self.student, threads=bench.threads))]
        timed += [
            (record, lambda artifact=artifact: artifact_runner(artifact, bench.threads, device))
            for record, artifact in checked
            if artifact is not None
        ]
        time_runners(timed, self.io, bench, self.say)


def int8_checked(checked: list[tuple[ArtifactRecord, Any]]) -> list[ArtifactRecord]:
    return [record for record, artifact in checked if artifact is not None and record.precision == "int8"]


def ptq_only_formats(int8_targets: list[tuple[str, str]], tried) -> dict[str, str]:
    """Formats whose INT8 stayed post-training quantization while a quantization-aware path ran, with why."""
    if not any(path.path in QUANTIZATION_AWARE for path in tried):
        return {}
    return {
        name: get_exporter(name).fake_quantized_gap
        for name, _ in int8_targets
        if not get_exporter(name).exports_fake_quantized
    }


def parity_failures(records: list[ArtifactRecord]) -> list[str]:
    return [
        f"{record.name} ({record.path}): {(record.parity or {}).get('failure')}"
        for record in records
        if record.status == "parity failed"
    ]


# What a user can change when an INT8 artifact fails its gate (post-training quantization hurt the student).
INT8_REMEDY = (
    "For INT8, try: export.int8.mode: qad (the student fine-tuned with simulated INT8 against its teacher) "
    "or auto, export.int8.mode: accuracy_control (OpenVINO with NNCF accuracy control), more "
    "export.calibration_images, export.calibration_method: entropy or percentile (ONNX Runtime), or a longer "
    "train.epochs (a well-trained student quantizes better); export.parity.int8_min_top1 and "
    "int8_max_acc_drop set the gate"
)


def parity_error(records: list[ArtifactRecord], where: str) -> ParityError | None:
    """The error (exit 1) naming every artifact outside its tolerance, with what to try for INT8; None when
    all pass. `where` says where the results are shown (they are, before the error is raised)."""
    failures = parity_failures(records)
    if not failures:
        return None
    int8 = any(record.precision == "int8" and record.status == "parity failed" for record in records)
    remedy = f" {INT8_REMEDY}." if int8 else ""
    return ParityError(
        f"parity: {len(failures)} artifact(s) outside tolerance ({where}): "
        + "; ".join(failures)
        + "."
        + remedy
    )
