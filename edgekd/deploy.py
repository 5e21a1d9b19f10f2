"""The deployment stages of `edgekd build`: export the students to ship, check every artifact, measure it.

Export writes each artifact the recipe asks for; the parity gate runs every artifact and the PyTorch student
on the same real validation images; accuracy runs each artifact on the whole validation and test splits
through its own runner; the latency harness times the PyTorch student and each artifact on one machine with
one thread count. Everything lands in one record per artifact, which the report turns into tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from edgekd.config.deploy import BenchmarkConfig, ExportConfig, ParityConfig
from edgekd.data import DataBundle
from edgekd.exporters import Artifact, Exporter, ExportOptions, ModelIO, get_exporter
from edgekd.formats import FORMATS, PRECISIONS
from edgekd.preflight import check_onnxruntime_device
from edgekd.records import ArtifactRecord
from edgekd.runtime import accuracy, artifact_runner, logits_of, model_io, split_arrays

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


def export_options(export: ExportConfig) -> ExportOptions:
    return ExportOptions(
        opset=export.opset,
        max_batch=export.max_batch,
        calibration_size=export.calibration_images,
        calibration_method=export.calibration_method,
        int8_max_drop=export.int8_max_drop,
    )


def export_all(
    student: nn.Module,
    io: ModelIO,
    export: ExportConfig,
    evaluation: EvalData,
    out_dir: Path,
    stem: str,
    also: tuple[str, str] | None = None,
) -> tuple[list[Artifact], list[ArtifactRecord]]:
    """Write every artifact; one an exporter cannot build here (TensorRT without TensorRT and a GPU) becomes a
    'not built' record with what the target builds it from and the command that does."""
    built: list[Artifact] = []
    not_built: list[ArtifactRecord] = []
    onnx_by_precision: dict[str, Artifact] = {}
    options = export_options(export)
    for format_name, precision in export_targets(export, also):
        exporter = get_exporter(format_name)
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
        )
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
) -> list[dict[str, Any]]:
    """Export, check and measure one student; returns one record per deployable model. ``also`` is a
    (format, precision) to export beyond the recipe's targets (the latency budget's).

    Raises ParityFailure (after the records are complete) when an artifact is outside its tolerance.
    """
    device = bench.onnxruntime_device
    if any(format_name == "onnx" for format_name, _ in export_targets(export, also)):
        check_onnxruntime_device(device)  # before anything is exported
    student = student.to("cpu").eval()
    io = model_io(data)
    evaluation = evaluation_data(data, export)
    torch_runner = TorchRunner(student, threads=bench.threads)
    records = [pytorch_record(student, torch_runner, evaluation, params)]
    reference = {"parity": logits_of(torch_runner, evaluation.parity_images)}
    artifacts, not_built = export_all(student, io, export, evaluation, out_dir, stem, also)
    timed: list[tuple[ArtifactRecord, Any]] = [
        (records[0], lambda: TorchRunner(student, threads=bench.threads))
    ]
    for artifact in artifacts:
        if say is not None:
            say(f"checking {artifact.format} {artifact.precision}")
        record = check_artifact(
            artifact,
            artifact_runner(artifact, bench.threads, device),
            reference,
            evaluation,
            export.parity,
            records[0].test_acc or 0.0,
        )
        records.append(record)
        timed.append((record, lambda artifact=artifact: artifact_runner(artifact, bench.threads, device)))
    records += not_built
    if bench.enabled:
        time_runners(timed, io, bench, say)
    return records


def parity_failures(records: list[ArtifactRecord]) -> list[str]:
    return [
        f"{record.name} ({record.path}): {(record.parity or {}).get('failure')}"
        for record in records
        if record.status == "parity failed"
    ]


# What a user can change when an INT8 artifact fails its gate (post-training quantization hurt the student).
INT8_REMEDY = (
    "For INT8, try: export.int8_max_drop (OpenVINO with NNCF accuracy control, e.g. 0.01), more "
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
