"""The backend catalog (edgekd.formats) is the one declaration of the deployment backends: exporters,
runners, the recipe, deployment, sizing, the environment record, the plots and `edgekd list backends` read
it, and a backend added to it alone (a toy one, tests/npz_backend.py) flows through all of them."""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn

from edgekd import deploy
from edgekd.bench.environment import PACKAGES
from edgekd.bench.runners import Runner, runner_for
from edgekd.config.deploy import ExportConfig, ParityConfig
from edgekd.config.models import LatencyBudgetConfig
from edgekd.errors import EdgekdError
from edgekd.exporters import Exporter, ExportOptions, ModelIO, get_exporter, read_metadata
from edgekd.formats import (
    BACKENDS,
    FORMATS,
    LATENCY_BACKENDS,
    PYTORCH,
    Backend,
    Package,
    backend_packages,
    load_named,
    plot_markers,
)
from edgekd.sizing.measure import describe_export

NPZ = Backend(
    "npzdir",
    "numpy",
    ("fp32",),
    (".npzdir",),
    "a folder holding the weights of a Flatten + Linear classifier (a test's toy backend)",
    exporter="npz_backend:NpzExporter",
    runner="npz_backend:NpzRunner",
    runtime_packages=(Package("numpy", ("numpy",)),),
    directory=True,
    export_options=("opset",),
    runner_settings=("precision",),
    metadata_reader="npz_backend:read_metadata",
    plot_marker="*",
)
IO = ModelIO(1, 4, 4, (0.5,), (0.25,), ("a", "b", "c"))


# ------------------------------------------------------------------------------- the catalog is the source
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_entry_names_its_exporter_runner_and_reader(name):
    entry = FORMATS[name]
    exporter = entry.exporter_class
    assert issubclass(exporter, Exporter) and exporter.format == name
    assert (exporter.precisions, exporter.suffix) == (entry.precisions, entry.suffix)
    runner = entry.runner_class
    assert issubclass(runner, Runner) and runner.backend == entry.runtime
    assert type(get_exporter(name)) is exporter
    if entry.metadata_reader is None:
        assert entry.metadata_note, "a format without metadata says where it is instead"
    else:
        assert callable(load_named(entry.metadata_reader, name))


def test_the_recipe_names_what_the_catalog_declares():
    (targets,) = [field for name, field in ExportConfig.model_fields.items() if name == "targets"]
    format_names, _ = get_args(targets.annotation)
    assert get_args(format_names) == tuple(FORMATS)
    assert get_args(LatencyBudgetConfig.model_fields["backend"].annotation) == (*BACKENDS, PYTORCH)
    assert {**{f.runtime: f.precisions for f in FORMATS.values()}, PYTORCH: ("fp32",)} == LATENCY_BACKENDS
    with pytest.raises(
        ValueError, match="'onnxruntime', 'openvino', 'tensorrt', 'litert', 'executorch' or 'pytorch'"
    ):
        LatencyBudgetConfig(limit_ms=1, backend="coreml")


def test_every_export_option_is_in_some_backends_cache_key():
    declared = {name for entry in FORMATS.values() for name in entry.export_options}
    assert declared == {field.name for field in fields(ExportOptions)}
    # The key tables were written under before the catalog: onnx's is unchanged.
    assert describe_export(ExportOptions(), "onnx") == {
        "opset": 18,
        "calibration_method": "minmax",
        "calibration_images": 300,
    }
    assert describe_export(ExportOptions(max_batch=8), "tensorrt")["max_batch"] == 8


def test_the_environment_record_and_the_plots_read_the_catalog():
    for module, distributions in backend_packages().items():
        assert PACKAGES[module] == distributions
    markers = plot_markers()
    assert set(markers) == {PYTORCH, *FORMATS} and len(set(markers.values())) == len(markers)


def test_list_backends_says_what_each_writes_and_whether_it_runs_here(cli):
    result = cli("list", "backends")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for entry in FORMATS.values():
        (line,) = [line for line in lines if line.startswith(f"{entry.name} ")]
        assert entry.runtime in line and ", ".join(entry.precisions) in line and entry.install in line
        assert ("available here" in line) == entry.available
    assert "pip install 'edgekd[tensorrt]'" in result.output


def test_a_missing_runtime_names_its_extra(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    monkeypatch.setitem(
        FORMATS, "tensorrt", replace(FORMATS["tensorrt"], runtime_packages=(Package("no_such_mod"),))
    )
    with pytest.raises(
        EdgekdError, match=r"needs the 'no_such_mod' package.*pip install 'edgekd\[tensorrt\]'"
    ):
        runner_for(engine)


# ------------------------------------------------------------------- a backend added by its entry alone
@pytest.fixture
def npz_backend(monkeypatch):
    """The toy backend's entry in the catalog, as a new backend's one entry would be; nothing else changes."""
    monkeypatch.setitem(FORMATS, NPZ.name, NPZ)
    monkeypatch.delitem(sys.modules, "npz_backend", raising=False)  # defined against this entry
    return NPZ


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_a_new_backend_exports_runs_and_reads_its_metadata(npz_backend, tmp_path):
    model = tiny_classifier()
    artifact = get_exporter("npzdir").export(model, IO, "fp32", tmp_path)
    assert artifact.path == tmp_path / "student_npzdir_fp32.npzdir" and artifact.path.is_dir()
    assert artifact.files == (artifact.path,) and artifact.size_bytes > 0
    assert ModelIO.from_metadata(read_metadata(artifact.path)) == IO
    images = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    runner = runner_for(artifact.path)  # by its suffix, a folder
    runner.load()
    expected = model(torch.from_numpy(images)).detach().numpy()
    np.testing.assert_allclose(runner.run(images), expected, atol=1e-5)
    assert describe_export(ExportOptions(opset=17), "npzdir") == {"opset": 17}
    with pytest.raises(EdgekdError, match=r"int8.*not supported by the npzdir exporter"):
        get_exporter("npzdir").export(model, IO, "int8", tmp_path)


def test_a_new_backend_is_deployed_and_checked(npz_backend, tmp_path):
    model = tiny_classifier()
    images = np.random.default_rng(1).standard_normal((16, 1, 4, 4)).astype(np.float32)
    labels = np.arange(16) % 3
    evaluation = deploy.EvalData(images, images[:8], (images, labels), (images, labels))
    artifacts, not_built = deploy.export_all(
        model, IO, ExportConfig(), evaluation, tmp_path, "student", also=("npzdir", "fp32")
    )
    assert [(a.format, a.precision) for a in artifacts] == [("npzdir", "fp32")] and not not_built
    runner = deploy.artifact_runner(artifacts[0], threads=1)
    reference = {"parity": model(torch.from_numpy(images[:8])).detach().numpy()}
    record = deploy.check_artifact(artifacts[0], runner, reference, evaluation, ParityConfig(), 0.0)
    assert record.status == "ok" and record.parity["passed"] and record.name == "npzdir fp32"
    assert runner.precision == "fp32"  # its entry asks deployment for the artifact's precision
    assert plot_markers()["npzdir"] == "*"
