"""DEPLOY.md of a real tiny build: every snippet it holds is run as written, in its own process, on real
digits images, and must print the class the PyTorch student picks for the same pixels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import build_tiny_kd_run

from edgekd.deploy_guide import EXAMPLE_IMAGE
from edgekd.runtime import split_arrays
from edgekd.standalone import load_source

pytestmark = pytest.mark.slow

EXPORT = {"targets": {"onnx": ["fp32"], "openvino": ["fp32"]}, "calibration_images": 32}
FAST_BENCH = {
    "batches": [1],
    "threads": 1,
    "warmup_iters": 1,
    "warmup_s": 0.0,
    "min_iters": 3,
    "min_time_s": 0.0,
}
IMAGES = 4
SNIPPET = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run, _, _ = build_tiny_kd_run(tmp_path_factory.mktemp("guide"), EXPORT, FAST_BENCH)
    return run


@pytest.fixture(scope="module")
def pixels_and_classes(run_dir) -> list[tuple[np.ndarray, str]]:
    """Validation digits as H×W×C uint8 pixels (the snippet's input), each with the class the PyTorch
    student gives those very pixels through the data pipeline's own scale, mean and std."""
    loaded = load_source(run_dir, None, None, (), ())
    spec = loaded.data.input_spec
    mean = np.array(spec.mean, dtype=np.float32)[:, None, None]
    std = np.array(spec.std, dtype=np.float32)[:, None, None]
    normalized, _ = split_arrays(loaded.data, "val", IMAGES)
    pixels = np.clip(np.rint((normalized * std + mean) * 255), 0, 255).astype(np.uint8)
    model_input = torch.from_numpy((pixels.astype(np.float32) / 255 - mean) / std)
    with torch.inference_mode():
        top = loaded.student.eval()(model_input).argmax(1).tolist()
    names = loaded.data.class_names
    return [(image.transpose(1, 2, 0), names[index]) for image, index in zip(pixels, top, strict=True)]


def snippets(run_dir: Path) -> dict[str, str]:
    """Each artifact's Python snippet in DEPLOY.md, by the artifact's title line."""
    text = (run_dir / "DEPLOY.md").read_text()
    found = {}
    for section in text.split("\n## ")[1:]:
        title = section.splitlines()[0]
        match = SNIPPET.search(section)
        if match:
            found[title] = match.group(1)
    return found


def test_deploy_md_has_a_snippet_per_artifact_and_the_runtimes_benchmark(run_dir):
    text = (run_dir / "DEPLOY.md").read_text()
    found = snippets(run_dir)
    assert sorted(found) == [
        "artifacts/kd_onnx_fp32.onnx (onnx fp32)",
        "artifacts/kd_openvino_fp32.xml (openvino fp32)",
    ]
    assert "benchmark_app -m artifacts/kd_openvino_fp32.xml -d CPU -shape [1,1,8,8]" in text
    assert "mean [" in text and "classes in order: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text
    for code in found.values():
        assert "edgekd" not in code
        assert len(code.splitlines()) <= 12


def test_every_snippet_runs_as_written_and_prints_pytorchs_class(run_dir, pixels_and_classes, tmp_path):
    for title, code in snippets(run_dir).items():
        script = tmp_path / "snippet.py"
        script.write_text(code)
        for image, expected in pixels_and_classes:
            np.save(run_dir / EXAMPLE_IMAGE, image)
            # -I: no PYTHONPATH and no current folder on the path, as in a fresh script on the device.
            done = subprocess.run(
                [sys.executable, "-I", str(script)], cwd=run_dir, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"{title}: {done.stderr}"
            assert done.stdout.strip() == expected, title


def test_edgekd_report_writes_deploy_md_again(run_dir, cli):
    """`edgekd report` rewrites the run's report files, DEPLOY.md among them (from the artifacts' metadata)."""
    guide = run_dir / "DEPLOY.md"
    original = guide.read_text()
    guide.unlink()
    result = cli("report", run_dir)
    assert result.exit_code == 0, result.output
    assert guide.read_text() == original
