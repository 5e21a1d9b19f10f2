"""teacher.file: a torch.export (.pt2) or ONNX teacher gives the module's logits, builds with kd like the
module, refuses methods that need the module, and is checked before loading (no pickled code runs)."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from model_helpers import briefly_trained, digits_tensors

from edgekd.errors import EdgekdError
from edgekd.models import create_model
from edgekd.models.file_teacher import load_teacher_file


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One briefly trained resnet8 on digits, as a state_dict, a .pt2 program and an ONNX model."""
    from edgekd.exporters.base import ModelIO
    from edgekd.exporters.onnx_export import torch_to_onnx

    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    module = briefly_trained(create_model("resnet8", 10, 1), *digits_tensors()).eval()
    torch.save(module.state_dict(), folder / "teacher.pt")
    example = torch.zeros(2, 1, 8, 8)
    batch = ({0: torch.export.Dim("batch", min=1)},)
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=batch), folder / "teacher.pt2")
    io_spec = ModelIO(1, 8, 8, (0.0,), (1.0,), tuple(str(c) for c in range(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto, _ = torch_to_onnx(module, io_spec, 17)
    (folder / "teacher.onnx").write_bytes(proto.SerializeToString())
    return {"module": folder / "teacher.pt", "pt2": folder / "teacher.pt2", "onnx": folder / "teacher.onnx"}


def module_teacher(files) -> torch.nn.Module:
    module = create_model("resnet8", 10, 1)
    module.load_state_dict(torch.load(files["module"], weights_only=True))
    return module.eval()


@pytest.mark.parametrize(("kind", "tolerance"), [("pt2", 1e-5), ("onnx", 1e-4)])
def test_file_teacher_gives_the_modules_logits(files, kind, tolerance):
    images = digits_tensors()[0][:300]
    teacher = load_teacher_file(files[kind]).eval()
    assert teacher.input_shape == (1, 8, 8) and teacher.num_classes == 10
    with torch.no_grad():
        expected = module_teacher(files)(images)
    # batches of other sizes than the export's example: the batch dimension is dynamic
    got = torch.cat([teacher(images[:1]), teacher(images[1:])])
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.slow
def test_kd_builds_with_file_teachers_match_the_module_teacher(cli, write_recipe, files, tmp_path):
    def build(name: str, teacher: dict) -> dict:
        recipe = write_recipe(name, teacher=teacher, distill={"method": "kd", "baselines": ["scratch"]})
        result = cli("build", recipe, "--quiet")
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / "runs" / name / "metrics.json").read_text())

    reference = build("module", {"model": "resnet8", "checkpoint": str(files["module"])})
    for kind in ("pt2", "onnx"):
        metrics = build(kind, {"file": str(files[kind]), "trained_on": "digits, 30 steps"})
        got, want = (next(r for r in m["models"] if r["role"] == "teacher") for m in (metrics, reference))
        assert got["source"] == "file" and got["trained_on"] == "digits, 30 steps"
        assert got["test_acc"] == want["test_acc"] and got["val_acc"] == want["val_acc"]
        assert got["test_loss"] == pytest.approx(want["test_loss"], abs=1e-4)
        assert got["test_nmi"] is None  # a file exposes no embedding
        student = next(r for r in metrics["models"] if r["name"] == "kd")
        assert student["test_acc"] == pytest.approx(_kd(reference)["test_acc"], abs=1.0)
        report = (tmp_path / "runs" / kind / "report.md").read_text()
        assert "as stated by the recipe: digits, 30 steps" in report


def _kd(metrics: dict) -> dict:
    return next(r for r in metrics["models"] if r["name"] == "kd")


@pytest.mark.parametrize("method", ["fitnet", "finetune", "refilled"])
def test_a_method_needing_the_module_is_refused(cli, write_recipe, files, tmp_path, method):
    recipe = write_recipe(
        teacher={"file": str(files["pt2"])}, distill={"method": "kd", "baselines": [method]}
    )
    result = cli("validate", recipe)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and method in line and "teacher.pt2" in line and "kd" in line
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------- bad files
class Trap:
    """Unpickling this makes a folder: the sign that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def rewritten(source: Path, target: Path, suffix: str, change) -> Path:
    """`source`'s archive with the member ending in `suffix` passed through `change`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            data = old.read(info.filename)
            new.writestr(info.filename, change(data) if info.filename.endswith(suffix) else data)
    return target


def pickled_trap(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Trap(marker), buffer)
    return buffer.getvalue()


def test_a_pt2_that_runs_code_on_load_is_refused(files, tmp_path):
    marker = tmp_path / "code-ran"
    evil = rewritten(
        files["pt2"], tmp_path / "evil.pt2", "sample_inputs/model.pt", lambda _: pickled_trap(marker)
    )
    # The file is a real threat: torch.export.load alone unpickles it and runs the code.
    # torch fails after it has unpickled (and run) the trap; how it fails varies with its logging setup
    with pytest.raises(Exception):  # noqa: B017
        torch.export.load(evil)
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(EdgekdError, match=r"teacher\.file: .*evil\.pt2.* could run code"):
        load_teacher_file(evil)
    assert not marker.exists()


def _edit_program(edit):
    def change(data: bytes) -> bytes:
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return change


def _call_system(program):
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _pickled_weights(data: bytes) -> bytes:
    config = json.loads(data)
    next(iter(config["config"].values()))["use_pickle"] = True
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("member", "change", "says"),
    [
        ("models/model.json", _edit_program(_call_system), "calls 'torch.os.system'"),
        ("models/model.json", _edit_program(lambda p: p.update(guards_code=["1"])), "guard code"),
        (
            "models/model.json",
            _edit_program(
                lambda p: p["graph_module"]["graph"]["sym_int_values"].update(
                    s={"as_expr": {"expr_str": "__import__('os').system('true')"}}
                )
            ),
            "not a plain symbol",
        ),
        ("weights_config.json", _pickled_weights, "stored as a pickle"),
    ],
)
def test_a_pt2_with_code_paths_is_refused_before_torch_reads_it(files, tmp_path, member, change, says):
    bad = rewritten(files["pt2"], tmp_path / "bad.pt2", member, change)
    with pytest.raises(EdgekdError, match=says):
        load_teacher_file(bad)


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("garbage.pt2", b"not a zip at all", "not a torch.export archive"),
        ("garbage.onnx", b"\x00\x01 not a protobuf", "not an ONNX model|cannot be loaded by ONNX Runtime"),
        ("pickle.onnx", None, "not an ONNX model|cannot be loaded by ONNX Runtime"),
    ],
)
def test_a_corrupt_file_is_a_one_line_error(cli, write_recipe, tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content if content is not None else pickled_trap(tmp_path / "code-ran"))
    result = cli("validate", write_recipe(teacher={"file": str(path)}))
    assert result.exit_code == 2
    assert "\n" not in result.output.strip() and "teacher.file" in result.output and name in result.output
    with pytest.raises(EdgekdError, match=says):
        load_teacher_file(path)
    assert not (tmp_path / "code-ran").exists()


def test_a_file_for_other_classes_is_refused(cli, write_recipe, files):
    data = {"dataset": "digits", "batch_size": 128, "classes": [0, 1, 2]}
    result = cli(
        "validate", write_recipe(data=data, teacher={"file": str(files["onnx"]), "classes": [0, 1, 2]})
    )
    assert result.exit_code == 2 and "gives 10 logits" in result.output and "3" in result.output


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"model": "resnet8"}, "teacher.model"),
        ({"train": {"epochs": 1}}, "teacher.file"),
        ({"checkpoint": "CHECKPOINT"}, "teacher.file"),
    ],
)
def test_file_is_exclusive_with_the_other_sources(cli, write_recipe, files, extra, field):
    extra = {k: (str(files["module"]) if v == "CHECKPOINT" else v) for k, v in extra.items()}
    result = cli("validate", write_recipe(teacher={"file": str(files["pt2"]), **extra}))
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert field in result.output


def test_a_missing_or_misnamed_file_is_a_recipe_error(cli, write_recipe, tmp_path):
    (tmp_path / "teacher.pkl").write_bytes(b"x")
    for path, says in ((tmp_path / "none.pt2", "does not exist"), (tmp_path / "teacher.pkl", "'.pkl'")):
        result = cli("validate", write_recipe(teacher={"file": str(path)}))
        assert result.exit_code == 2 and "teacher.file" in result.output and says in result.output
