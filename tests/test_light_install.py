"""The device install: a fresh virtual environment with edgekd's base dependencies only (no torch, no
matplotlib) runs `edgekd bench` on real artifacts, and `edgekd build` there says which extra it needs.

pip installs the base set from the package index (skipped, with pip's reason, where it cannot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.exporters import ModelIO, get_exporter
from edgekd.models import create_model

tomllib = pytest.importorskip("tomllib")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TRAINING_MODULES = ("torch", "torchvision", "matplotlib", "nncf", "sklearn", "scipy", "onnxscript")
QUICK = ["--warmup-iters", "1", "--warmup-s", "0", "--min-iters", "3", "--min-time-s", "0"]
# Runs the CLI, then prints which training modules the process imported (none may be).
WRAPPER = f"""
import sys
from edgekd.cli import main
try:
    main(sys.argv[1:])
finally:
    print("imported:", [m for m in {TRAINING_MODULES!r} if m in sys.modules])
"""


def base_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    # Without PYTHONPATH the venv sees only what was installed into it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("light") / "venv"
    created = run([sys.executable, "-m", "venv", str(folder)])
    assert created.returncode == 0, created.stderr
    python = folder / "bin" / "python"
    for args in (base_dependencies(), ["--no-deps", "-e", str(ROOT)]):
        installed = run([str(python), "-m", "pip", "install", "-q", *args])
        if installed.returncode != 0:
            pytest.skip(f"pip cannot install edgekd's base set here: {installed.stderr.strip()[-300:]}")
    return python


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    """A tiny classifier exported by edgekd (with its metadata) in this full environment."""
    out = tmp_path_factory.mktemp("light_artifacts")
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=3, in_channels=1, width=8).eval()
    io = ModelIO(1, 8, 8, (0.5,), (0.25,), ("a", "b", "c"))
    return [get_exporter(fmt).export(model, io, "fp32", out).path for fmt in ("onnx", "openvino")]


def test_the_light_venv_has_no_training_stack(light_python):
    probe = f"import importlib.util as u; print([m for m in {TRAINING_MODULES!r} if u.find_spec(m)])"
    assert run([str(light_python), "-c", probe]).stdout.strip() == "[]"


def test_bench_runs_each_artifact_without_importing_the_training_stack(light_python, artifacts, tmp_path):
    for artifact in artifacts:
        result_file = tmp_path / f"{artifact.stem}.json"
        done = run(
            [str(light_python), "-c", WRAPPER, "bench", str(artifact), *QUICK, "--json", str(result_file)]
        )
        assert done.returncode == 0, done.stderr
        assert "imported: []" in done.stdout
        assert result_file.is_file()


def test_build_without_the_training_stack_names_the_extra(light_python):
    edgekd = light_python.with_name("edgekd")  # the console script pip installed
    done = run([str(edgekd), "build", str(ROOT / "recipes" / "quickstart.yaml")])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: edgekd build: needs the training stack, which is not installed (no module 'torch'); "
        "install it with: pip install 'edgekd[train]'"
    ]
