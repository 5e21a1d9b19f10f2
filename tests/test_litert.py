"""LiteRT (.tflite): real litert-torch conversions, ai-edge-quantizer INT8 and ai-edge-litert runs of a tiny
ResNet trained on the digits images, then real `edgekd build`s with LiteRT targets and a LiteRT latency
budget. Skipped, with the install command as the reason, where the `litert` extra is not installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from edge_runtime_helpers import (
    IO,
    QUICK_TIMING,
    TRAIN,
    digits_arrays,
    held_out_logits,
    logits,
    skip_without,
    trained_student,
)
from torch import nn

from edgekd.bench.runners import runner_for
from edgekd.deploy_guide import EXAMPLE_IMAGE
from edgekd.exporters import ModelIO, get_exporter, read_metadata
from edgekd.formats import FORMATS, PARITY_DEFAULTS
from edgekd.models import create_model

LITERT = FORMATS["litert"]
pytestmark = skip_without(LITERT)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return digits_arrays()


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    return trained_student(*digits)


@pytest.fixture(scope="module")
def reference(trained, digits) -> np.ndarray:
    return held_out_logits(trained, digits[0])


@pytest.fixture(scope="module")
def exported(trained, digits, tmp_path_factory) -> dict:
    """The FP32 and INT8 .tflite of the trained model, INT8 calibrated on 200 training images."""
    folder = tmp_path_factory.mktemp("litert")
    exporter = get_exporter("litert")
    return {
        precision: exporter.export(trained, IO, precision, folder, calibration=digits[0][:200])
        for precision in ("fp32", "int8")
    }


# ----------------------------------------------------------------------------------- export and runner
def test_fp32_matches_pytorch_at_batch_1_and_4(exported, digits, reference):
    artifact = exported["fp32"]
    assert artifact.path.name == "student_litert_fp32.tflite" and artifact.size_bytes > 0
    held_out = digits[0][TRAIN:]
    limit = PARITY_DEFAULTS["fp32"].max_abs
    for batch in (1, 4):
        assert np.abs(logits(artifact.path, held_out, batch) - reference).max() <= limit


def test_int8_agrees_with_pytorch_and_is_int8_inside(exported, digits, reference):
    artifact = exported["int8"]
    assert artifact.details["quantization"]["calibration_images"] == 200
    held_out = digits[0][TRAIN:]
    one, four = logits(artifact.path, held_out, 1), logits(artifact.path, held_out, 4)
    np.testing.assert_array_equal(one, four)  # resizing the input changes nothing
    agreement = float((one.argmax(1) == reference.argmax(1)).mean())
    assert agreement >= PARITY_DEFAULTS["int8"].min_top1
    runner = runner_for(artifact.path)
    runner.load()
    assert runner.precision == "int8" and runner.describe()["io_dtype"] == "int8"
    assert artifact.size_bytes < exported["fp32"].size_bytes


def test_an_int8_model_with_more_than_256_kb_of_constants_loads_and_runs(digits, tmp_path):
    """ai-edge-quantizer stores the constants of a model above 256 KB after the flatbuffer; edgekd's rewrite
    (metadata, freed reshapes) must keep them: it once wrote a file the interpreter refused."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()  # 272k parameters
    artifact = get_exporter("litert").export(model, IO, "int8", tmp_path, calibration=digits[0][:32])
    assert artifact.size_bytes > 256 * 1024
    out = logits(artifact.path, digits[0][:8], 4)
    assert out.shape == (8, 10) and np.isfinite(out).all()
    assert read_metadata(artifact.path)["precision"] == "int8"


def test_a_bound_batch_gives_what_run_gives(exported, digits):
    runner = runner_for(exported["int8"].path, threads=1)
    runner.load()
    images = digits[0][TRAIN : TRAIN + 4]
    runner.prepare_batch(4)
    bound = runner.bind_inference(images)
    bound.infer()
    np.testing.assert_array_equal(bound.logits(), runner.run(images))


def test_metadata_round_trips_without_torch(exported):
    path = exported["int8"].path
    assert ModelIO.from_metadata(read_metadata(path)) == IO
    # The device side reads it with ai-edge-litert and numpy only: torch must not even be imported.
    code = (
        "import sys, json; from edgekd.exporters.litert_export import read_metadata; "
        f"meta = read_metadata({str(path)!r}); assert 'torch' not in sys.modules, 'torch imported'; "
        "print(json.dumps(meta))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    assert meta["precision"] == "int8" and meta["format"] == "litert" and meta["layout"] == "NCHW"
    assert json.loads(meta["class_names"]) == list(IO.class_names)


def test_a_foreign_file_is_refused_in_one_line(tmp_path):
    from edgekd.errors import EdgekdError

    fake = tmp_path / "m.tflite"
    fake.write_bytes(b"not a model at all")
    runner = runner_for(fake)
    with pytest.raises(EdgekdError, match=r"is not a \.tflite model"):
        runner.load()


# -------------------------------------------------------------------------------------- real builds
@pytest.mark.slow
def test_a_build_with_litert_targets_checks_parity_and_writes_runnable_snippets(cli, write_recipe, tmp_path):
    # A 2-epoch student is not what INT8 parity guards (its logits are flat): the fp32 rows are the check.
    export = {
        "targets": {"litert": ["fp32", "int8"]},
        "calibration_images": 64,
        "parity": {"int8_min_top1": 0.5, "int8_max_acc_drop": 50},
    }
    result = cli("build", write_recipe(export=export, benchmark=QUICK_TIMING), "--quiet")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    records = json.loads((run / "metrics.json").read_text())["artifacts"]
    litert = {r["name"]: r for r in records if r["format"] == "litert"}
    assert sorted(litert) == ["litert fp32", "litert int8"]
    for record in litert.values():
        assert record["status"] == "ok" and record["parity"]["passed"], record
        assert record["path"].endswith(".tflite") and record["test_acc"] is not None
        assert record["latency"] and record["runs_on"] == "litert cpu", record
    guide = (run / "DEPLOY.md").read_text()
    assert "python -m ai_edge_litert.tools.benchmark_litert_model --model artifacts/" in guide
    image = np.zeros((8, 8, 1), dtype=np.uint8)
    np.save(run / EXAMPLE_IMAGE, image)
    for code in re.findall(r"```python\n(.*?)```", guide, re.DOTALL):
        assert "edgekd" not in code
        script = tmp_path / "snippet.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, "-I", str(script)], cwd=run, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] in [str(d) for d in range(10)]


@pytest.mark.slow
def test_a_latency_budget_on_litert_is_measured_on_the_tflite(cli, write_recipe, tmp_path):
    # A generous limit: this checks that the budget runs on LiteRT, not how fast this machine is.
    student = {
        "family": "resnet",
        "budget": {"params": "20k", "latency": {"limit_ms": 1000, "backend": "litert", "precision": "fp32"}},
    }
    result = cli("build", write_recipe(student=student, benchmark=QUICK_TIMING), "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    latency = metrics["budget_check"]["latency"]
    assert latency["artifact"] == "litert fp32" and latency["verdict"] == "fits"
    assert latency["measured_ms"] > 0
    assert "litert fp32" in [a["name"] for a in metrics["artifacts"]]
