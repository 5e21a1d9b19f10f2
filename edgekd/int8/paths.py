"""The INT8 paths and how `export.int8.mode: auto` walks them.

A path is one way of quantizing the student: ``ptq`` (each exporter's post-training quantization),
``accuracy_control`` (NNCF's accuracy-controlled PTQ, OpenVINO only), ``qat`` and ``qad`` (the
quantization-aware student, edgekd.int8.stage). A path passes when every INT8 artifact it made keeps its
top-1 agreement with the PyTorch student (export.parity.int8_min_top1) and loses at most
export.parity.int8_max_acc_drop points of *validation* accuracy: auto chooses on validation, never on the
test split. The build's own gate then judges the shipped artifacts as it judges every artifact.
"""

from __future__ import annotations

from edgekd.config.deploy import ParityConfig
from edgekd.records import ArtifactRecord, Int8PathRecord


def path_order(mode: str, teacher_teaches: bool) -> list[str]:
    """The paths a mode tries, in order: auto goes on to the next only while the last one fails. Auto's
    quantization-aware step is QAD, or QAT where the teacher has none of the student's classes."""
    if mode == "auto":
        return ["ptq", "qad" if teacher_teaches else "qat", "accuracy_control"]
    return [mode]


def validation_failure(record: ArtifactRecord, student_val_acc: float, parity: ParityConfig) -> str | None:
    """Why an INT8 artifact fails on validation (top-1 agreement, then the accuracy drop), or None."""
    logits = record.parity or {}
    if logits.get("logits_passed") is False:
        return logits.get("failure") or "top-1 agreement below export.parity.int8_min_top1"
    drop = student_val_acc - (record.val_acc or 0.0)
    if drop > parity.int8_max_acc_drop:
        return f"validation accuracy drop {drop:.2f} pt > int8_max_acc_drop {parity.int8_max_acc_drop:.2f} pt"
    return None


def path_record(
    path: str,
    records: list[ArtifactRecord],
    student: ArtifactRecord,
    parity: ParityConfig,
    stage: dict | None = None,
) -> Int8PathRecord:
    """The INT8 artifacts of one path, each with its accuracies, drops and validation verdict."""
    artifacts = {}
    for record in records:
        failure = validation_failure(record, student.val_acc or 0.0, parity)
        artifacts[record.name] = {
            "made_by": record.details.get("int8_path", "ptq"),
            "val_acc": record.val_acc,
            "test_acc": record.test_acc,
            "val_drop": _drop(student.val_acc, record.val_acc),
            "test_drop": _drop(student.test_acc, record.test_acc),
            "passed_on_validation": failure is None,
            **({"failure": failure} if failure else {}),
        }
    passed = all(entry["passed_on_validation"] for entry in artifacts.values())
    return Int8PathRecord(path=path, artifacts=artifacts, passed_on_validation=passed, stage=stage)


def shipped_reason(mode: str, tried: list[Int8PathRecord]) -> str:
    """Why the last path tried is the one shipped, in a sentence."""
    if mode != "auto":
        return f"export.int8.mode is {mode}"
    last, failed = tried[-1], [path.path for path in tried[:-1]]
    if last.passed_on_validation:
        if not failed:
            return "post-training quantization passed the gate on validation"
        return f"{' and '.join(failed)} failed the gate on validation; {last.path} passed it"
    names = ", ".join(path.path for path in tried)
    return f"every path tried failed the gate on validation ({names}); the last is shipped"


def _drop(reference: float | None, value: float | None) -> float | None:
    if reference is None or value is None:
        return None
    return round(reference - value, 4)
