"""The INT8 recovery benchmark's summary and README table, on hand-made per-seed results: the README quotes
them, so a wrong pairing or a missing path must fail here rather than in a 2-hour run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def recovery():
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling `specialization` module lazily
    spec = importlib.util.spec_from_file_location("int8_recovery", BENCHMARKS / "int8_recovery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["int8_recovery"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("int8_recovery")
    sys.path.remove(str(BENCHMARKS))


def seed_run(fp32: float, accuracies: dict[str, float], control: float) -> dict:
    def artifact(acc: float, p50: float) -> dict:
        return {"test_acc": acc, "test_drop": round(fp32 - acc, 4), "p50_ms": p50}

    paths = {
        path: {
            "fp32_test_acc": fp32,
            "artifacts": {"onnx int8": artifact(acc, 2.0), "openvino int8": artifact(acc - 1, 1.0)},
            "stage": {"train_time_s": 3.0} if path in ("qat", "qad") else None,
        }
        for path, acc in accuracies.items()
    }
    return {"paths": paths, "fp32_control": {"test_acc": control}}


def test_summary_pairs_qad_with_qat_and_the_control(recovery):
    runs = {
        str(seed): seed_run(
            90.0 + seed,
            {
                "ptq": 88.0 + seed,
                "accuracy_control": 89.0 + seed,
                "qat": 89.5 + seed,
                "qad": 90.0 + seed + 0.1 * seed,
            },
            90.5 + seed,
        )
        for seed in range(3)
    }
    summary = recovery.summarize(runs)
    onnx = summary["onnx int8"]
    assert onnx["ptq"]["drop_mean"] == pytest.approx(2.0)
    assert onnx["qad"]["drop_mean"] == pytest.approx(-0.1)
    assert onnx["qad_minus_qat"]["mean"] == pytest.approx(0.6)  # 0.5, 0.6, 0.7
    assert onnx["qad_minus_fp32_control"]["mean"] == pytest.approx(-0.4)
    assert summary["fp32_control_mirrors"] == "qad"
    assert onnx["qat"]["stage_train_s_mean"] == 3.0 and onnx["ptq"]["stage_train_s_mean"] == 0.0
    table = recovery.markdown({"configs": {"demo": {"summary": summary, "paths": list(recovery.PATHS)}}})
    assert "| demo (91.00 ± 1.00) | qad | 91.10 | -0.10" in table
    assert "QAD - QAT, onnx int8 | +0.60" in table


def test_a_teacher_that_cannot_teach_is_summarised_without_qad(recovery):
    """Cross-task: no QAD path; the FP32 control mirrors QAT and the table says why QAD is missing."""
    paths = recovery.paths_for(teaches=False)
    assert "qad" not in paths and "qat" in paths
    runs = {
        str(seed): seed_run(90.0, {"ptq": 89.0, "accuracy_control": 89.5, "qat": 90.0 + seed}, 90.0)
        for seed in range(3)
    }
    summary = recovery.summarize(runs)
    assert "qad" not in summary["onnx int8"] and "qad_minus_qat" not in summary["onnx int8"]
    assert summary["fp32_control_mirrors"] == "qat"
    assert summary["onnx int8"]["qat_minus_fp32_control"]["mean"] == pytest.approx(1.0)
    config = {"summary": summary, "paths": list(paths), "qad": recovery.NO_QAD}
    table = recovery.markdown({"configs": {"crosstask": config}})
    assert "qad: not run (the teacher shares no class with the student)" in table
    assert "QAT - FP32 control, onnx int8: +1.00" in table
    assert "QAD - QAT" not in table
