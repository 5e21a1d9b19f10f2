"""Shared fixtures: tiny recipes on the embedded digits data, and a runner for the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from model_helpers import briefly_trained, digits_tensors
from torch import nn

from edgekd.cli import main
from edgekd.models import create_model

# Two threads at most, like the 2-core CI machine; results must not depend on it, but time does.
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_RECIPE = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "batch_size": 128},
    "teacher": {"model": "resnet8", "train": {"epochs": 2, "optimizer": {"lr": 0.1}}},
    "student": {"family": "resnet", "budget": {"params": "20k"}},
    "distill": {"method": "kd", "baselines": ["scratch"]},
    "train": {"epochs": 2, "optimizer": {"lr": 0.1}},
}


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe (the tiny one, updated section by section) into tmp_path; returns its path."""

    def write(name: str = "tiny", **sections) -> Path:
        recipe = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
        recipe["name"] = name
        recipe["output_dir"] = str(tmp_path / "runs")
        for key, value in sections.items():
            recipe[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write


@pytest.fixture
def cli():
    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def cli_processes():
    """Runs `edgekd ...` as a real process per call (forked from a server that imported edgekd once): exit
    code, stdout, stderr as a user sees them, native libraries' output included; 20 CPU seconds and 3 GiB at
    most (and a wall-clock ceiling only against a hang)."""
    from cli_forkserver import CliProcesses

    processes = CliProcesses()
    yield processes
    processes.close()


@pytest.fixture(autouse=True)
def _restore_sigchld():
    """torch's DataLoader installs a SIGCHLD handler for its workers that outlives them; a later, unrelated
    child process exiting (subprocess.run) can then crash the interpreter. Each test starts clean."""
    import signal

    yield
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


# ------------------------------------------------------------------------------------------- digits, teacher
DIGITS_SHAPE = (1, 8, 8)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_tensors()


@pytest.fixture(scope="session")
def teacher(digits) -> nn.Module:
    """A resnet20 trained for a few dozen steps: real features, not a random network's."""
    torch.manual_seed(0)
    return briefly_trained(create_model("resnet20", 10, 1), *digits).eval().requires_grad_(False)
