"""Which student a build ships (export.models, chosen on validation), the warnings before shipping, and
`edgekd export` of every student of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE

from edgekd.config.loading import validate_recipe
from edgekd.records import ModelRecord, RunMetrics
from edgekd.shipping import ship, shipping_warnings


def student(name: str, val_acc: float, *, main: bool = False, fits: bool | None = True) -> ModelRecord:
    return ModelRecord(
        name=name,
        role="student",
        arch="resnet8",
        model_args={},
        params=1000,
        flops=1,
        val_acc=val_acc,
        test_acc=0.0,  # never read: a test accuracy that would flip the choice must not
        method=name,
        is_main=main,
        fits_budget=fits,
    )


def teacher(val_on_student_task: float) -> ModelRecord:
    return ModelRecord(
        name="teacher",
        role="teacher",
        arch="resnet20",
        model_args={},
        params=9000,
        flops=1,
        val_acc=val_on_student_task,
        test_acc=0.0,
        student_task_val_acc=val_on_student_task,
    )


def recipe(**export):
    raw = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    raw["distill"] = {"method": "kd", "baselines": ["scratch", "finetune"]}
    raw["export"] = export
    return validate_recipe(raw)


def test_best_val_ships_the_student_with_the_highest_validation_accuracy_whatever_its_method():
    models = [student("kd", 90.0, main=True), student("scratch", 95.0), student("finetune", 99.0, fits=False)]
    shipped = ship(recipe(), models)
    assert shipped.model == "scratch"
    assert shipped.exported == ["scratch"]
    assert "above the main method's" in shipped.reason and "finetune" in shipped.reason  # over budget, said


def test_a_validation_tie_goes_to_the_main_method():
    shipped = ship(recipe(), [student("scratch", 95.0), student("kd", 95.0, main=True)])
    assert shipped.model == "kd"


@pytest.mark.parametrize(
    ("models", "shipped", "exported"),
    [
        ("main", "kd", ["kd"]),
        ("all", "scratch", ["scratch", "kd", "finetune"]),
        (["finetune", "kd"], "finetune", ["finetune", "kd"]),
    ],
)
def test_export_models_main_all_and_a_list(models, shipped, exported):
    records = [
        student("kd", 90.0, main=True),
        student("scratch", 95.0),
        student("finetune", 99.0, fits=False),
    ]
    chosen = ship(recipe(models=models), records)
    assert (chosen.model, chosen.exported) == (shipped, exported)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["kd", "rkd"], "export.models.1: 'rkd' is not trained by this recipe"),
        (["kd", "kd"], "export.models: .* must name each method once"),
        ("best", "export.models"),
    ],
)
def test_export_models_that_the_recipe_does_not_train_are_refused(models, message):
    from edgekd.errors import RecipeError

    with pytest.raises(RecipeError, match=message):
        recipe(models=models)


def test_warnings_main_below_its_reference_and_teacher_below_a_student():
    models = [teacher(80.0), student("kd", 70.0, main=True), student("scratch", 85.0)]
    warnings = shipping_warnings(recipe(), models)
    assert len(warnings) == 2
    assert "main method kd is below its reference scratch on validation" in warnings[0]
    assert "teacher is weaker than the student scratch on validation (80.00 % vs 85.00 %)" in warnings[1]
    quiet = [teacher(99.0), student("kd", 90.0, main=True), student("scratch", 85.0)]
    assert shipping_warnings(recipe(), quiet) == []


@pytest.mark.slow
def test_a_build_exports_every_student_asked_for_and_edgekd_export_takes_each_checkpoint(tmp_path, cli):
    """export.models: all over two seeds: each student's artifacts, the shipped one named with its reason in
    the CLI, the report and DEPLOY.md; then `edgekd export` of every student checkpoint of the run."""
    raw = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    raw.update(output_dir=str(tmp_path / "runs"), seeds=[0, 1])
    raw["export"] = {"targets": {"onnx": ["fp32"]}, "models": "all"}
    raw["benchmark"] = {"enabled": False}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("build", path, "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    metrics = RunMetrics.load(run_dir / "metrics.json")
    shipped = metrics.shipped
    assert shipped is not None and sorted(shipped.exported) == ["kd", "scratch"]
    best = max((m for m in metrics.models if m.role == "student"), key=lambda m: (m.val_acc, m.is_main))
    assert shipped.model == best.name
    assert {record.model for record in metrics.artifacts} == {"kd", "scratch"}
    for name in ("kd", "scratch"):
        assert (run_dir / "artifacts" / f"{name}_onnx_fp32.onnx").is_file()
        assert f"artifacts/{name}_onnx_fp32.onnx" in result.output  # every artifact's path is listed
    assert f"ship: {shipped.model} (" in result.output
    assert f"Shipped: `{shipped.model}`, seed 0's weights" in (run_dir / "report.md").read_text()
    guide = (run_dir / "DEPLOY.md").read_text()
    assert f"The student to ship: `{shipped.model}`" in guide
    assert "(kd: onnx fp32)" in guide and "(scratch: onnx fp32)" in guide  # whose artifact each section is

    checkpoints = sorted(path for path in (run_dir / "models").glob("*.pt") if path.stem != "teacher")
    assert [path.stem for path in checkpoints] == ["kd_seed0", "kd_seed1", "scratch_seed0", "scratch_seed1"]
    for checkpoint in checkpoints:
        out = tmp_path / "exported" / checkpoint.stem
        result = cli("export", checkpoint, "--format", "onnx", "--output", out)
        assert result.exit_code == 0, result.output
        (_artifact,) = Path(out).glob("*.onnx")
        assert "ok (max" in result.output
    teacher_export = cli("export", run_dir / "models" / "teacher.pt", "--format", "onnx")
    assert teacher_export.exit_code == 2 and "is the run's teacher" in teacher_export.output
