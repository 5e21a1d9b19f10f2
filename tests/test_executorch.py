"""ExecuTorch (.pte): real torch.export lowerings to XNNPACK, PT2E INT8 and runs in ExecuTorch's Python
runtime of a tiny ResNet trained on the digits images, then real `edgekd build`s with ExecuTorch targets and
an ExecuTorch latency budget. Skipped, with the install command as the reason, where the `executorch` extra is
not installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
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
from edgekd.errors import EdgekdError
from edgekd.exporters import ModelIO, get_exporter, read_metadata
from edgekd.formats import FORMATS, PARITY_DEFAULTS

EXECUTORCH = FORMATS["executorch"]
pytestmark = skip_without(EXECUTORCH)

# One thread everywhere: ExecuTorch's threadpool is sized once per process (see executorch_runner).


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
    """The FP32 and INT8 .pte of the trained model, INT8 calibrated on 200 training images."""
    folder = tmp_path_factory.mktemp("executorch")
    exporter = get_exporter("executorch")
    return {
        precision: exporter.export(trained, IO, precision, folder, calibration=digits[0][:200])
        for precision in ("fp32", "int8")
    }


# ----------------------------------------------------------------------------------- export and runner
def test_fp32_matches_pytorch_at_batch_1_4_and_beyond_the_file_bound(exported, digits, reference):
    artifact = exported["fp32"]
    assert artifact.path.name == "student_executorch_fp32.pte" and artifact.size_bytes > 0
    assert artifact.details["lowering"]["delegate_calls"] >= 1
    held_out = digits[0][TRAIN:]
    limit = PARITY_DEFAULTS["fp32"].max_abs
    # 64 is past the 15 images one call takes: the runner splits it.
    for batch in (1, 4, 64):
        assert np.abs(logits(artifact.path, held_out, batch) - reference).max() <= limit


def test_int8_agrees_with_pytorch(exported, digits, reference):
    artifact = exported["int8"]
    assert artifact.details["quantization"]["calibration_images"] == 200
    held_out = digits[0][TRAIN:]
    one, many = logits(artifact.path, held_out, 1), logits(artifact.path, held_out, 15)
    np.testing.assert_allclose(one, many, atol=1e-5)  # the batch size changes nothing that matters
    agreement = float((one.argmax(1) == reference.argmax(1)).mean())
    assert agreement >= PARITY_DEFAULTS["int8"].min_top1
    runner = runner_for(artifact.path)
    runner.load()
    assert runner.precision == "int8" and runner.max_batch == 15
    assert artifact.size_bytes < exported["fp32"].size_bytes


def test_a_bound_batch_gives_what_run_gives(exported, digits):
    runner = runner_for(exported["int8"].path, threads=1)
    runner.load()
    for size in (4, 20):  # one call, and two chunks
        images = digits[0][TRAIN : TRAIN + size]
        runner.prepare_batch(size)
        bound = runner.bind_inference(images)
        bound.infer()
        np.testing.assert_array_equal(bound.logits(), runner.run(images))


def test_metadata_round_trips(exported):
    path = exported["int8"].path
    assert ModelIO.from_metadata(read_metadata(path)) == IO
    meta = read_metadata(path)
    assert meta["precision"] == "int8" and meta["format"] == "executorch" and meta["layout"] == "NCHW"
    assert json.loads(meta["class_names"]) == list(IO.class_names)


def test_another_thread_count_after_a_load_is_refused_in_one_line(exported):
    runner_for(exported["fp32"].path, threads=1).load()
    with pytest.raises(EdgekdError, match="cannot be resized after a model loaded"):
        runner_for(exported["fp32"].path, threads=2).load()


def test_a_foreign_file_is_refused_in_one_line(tmp_path):
    fake = tmp_path / "m.pte"
    fake.write_bytes(b"not a model at all")
    runner = runner_for(fake)
    with pytest.raises(EdgekdError, match=r"is not a \.pte program"):
        runner.load()


# -------------------------------------------------------------------------------------- real builds
@pytest.mark.slow
def test_a_build_with_executorch_targets_checks_parity_and_writes_runnable_snippets(
    cli, write_recipe, tmp_path
):
    # A 2-epoch student is not what INT8 parity guards (its logits are flat): the fp32 rows are the check.
    export = {
        "targets": {"executorch": ["fp32", "int8"]},
        "calibration_images": 64,
        "parity": {"int8_min_top1": 0.5, "int8_max_acc_drop": 50},
    }
    result = cli("build", write_recipe(export=export, benchmark=QUICK_TIMING), "--quiet")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    records = json.loads((run / "metrics.json").read_text())["artifacts"]
    built = {r["name"]: r for r in records if r["format"] == "executorch"}
    assert sorted(built) == ["executorch fp32", "executorch int8"]
    for record in built.values():
        assert record["status"] == "ok" and record["parity"]["passed"], record
        assert record["path"].endswith(".pte") and record["test_acc"] is not None
        assert record["latency"] and record["runs_on"] == "executorch cpu", record
    guide = (run / "DEPLOY.md").read_text()
    assert "edgekd bench artifacts/" in guide and "executor_runner must be built" in guide
    image = np.zeros((8, 8, 1), dtype=np.uint8)
    np.save(run / EXAMPLE_IMAGE, image)
    for code in re.findall(r"```python\n(.*?)```", guide, re.DOTALL):
        assert "edgekd" not in code and len(code.strip().splitlines()) <= 12
        script = tmp_path / "snippet.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, "-I", str(script)], cwd=run, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] in [str(d) for d in range(10)]


@pytest.mark.slow
def test_a_latency_budget_on_executorch_is_measured_on_the_pte(cli, write_recipe, tmp_path):
    # A generous limit: this checks that the budget runs on ExecuTorch, not how fast this machine is.
    student = {
        "family": "resnet",
        "budget": {
            "params": "20k",
            "latency": {"limit_ms": 1000, "backend": "executorch", "precision": "fp32"},
        },
    }
    result = cli("build", write_recipe(student=student, benchmark=QUICK_TIMING), "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    latency = metrics["budget_check"]["latency"]
    assert latency["artifact"] == "executorch fp32" and latency["verdict"] == "fits"
    assert latency["measured_ms"] > 0
    assert "executorch fp32" in [a["name"] for a in metrics["artifacts"]]
