"""The fast training path's options (train.amp, train.channels_last, mode, data.pin_memory) through a real
build on the CPU, and on CUDA where a GPU is present (marked gpu)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgekd.config.loading import load_recipe
from edgekd.prepare import set_compute_mode

TRAIN = {"epochs": 2, "optimizer": {"lr": 0.05}}
QUICK = {"export": {"targets": {}}, "benchmark": {"enabled": False}, "report": {"plots": False}}


def build(cli, path):
    result = cli("build", path, "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads((path.parent / "runs" / path.stem / "metrics.json").read_text())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_fp32_weights(write_recipe, cli, tmp_path, amp):
    path = write_recipe(f"amp_{amp}", train={**TRAIN, "amp": amp}, **QUICK)
    metrics = build(cli, path)
    student = {m["name"]: m for m in metrics["models"]}["kd"]
    assert student["test_acc"] > 30  # 10 classes: chance is 10 %
    weights = torch.load(tmp_path / "runs" / path.stem / "models" / "kd.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_channels_last_and_speed_mode_are_reported(write_recipe, cli, tmp_path):
    path = write_recipe("fast", train={**TRAIN, "channels_last": True}, mode="speed", **QUICK)
    metrics = build(cli, path)
    assert metrics["run"]["mode"] == "speed"
    report = (tmp_path / "runs" / "fast" / "report.md").read_text()
    assert "channels_last" in report and "mode speed" in report
    set_compute_mode("deterministic")  # the flags are process-wide: leave them as the other tests expect


def test_default_mode_is_deterministic(write_recipe):
    recipe = load_recipe(write_recipe("plain"))
    assert recipe.mode == "deterministic" and recipe.train.amp is None and recipe.data.pin_memory is None


def test_amp_fp16_refuses_bad_value(write_recipe, cli):
    result = cli("build", write_recipe("bad", train={**TRAIN, "amp": "fp8"}))
    assert result.exit_code == 2
    assert "train.amp" in result.output and "fp8" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_build_bf16_channels_last_one_process_ddp(write_recipe, tmp_path):
    """On a GPU: a one-process NCCL DDP build with AMP bf16, channels_last and pinned memory."""
    path = write_recipe(
        "cuda",
        device="cuda",
        mode="speed",
        train={**TRAIN, "amp": "bf16", "channels_last": True},
        data={"dataset": "digits", "batch_size": 64, "num_workers": 2},
        **QUICK,
    )
    done = subprocess.run(
        [sys.executable, "-m", "edgekd", "build", str(path), "--quiet", "--nproc", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "cuda" / "metrics.json").read_text())
    assert metrics["run"]["distributed"]["backend"] == "nccl"
    assert metrics["run"]["device"].startswith("cuda")
    assert {m["name"]: m for m in metrics["models"]}["kd"]["test_acc"] > 30


def test_nproc_refuses_a_batch_that_does_not_split(write_recipe, cli, tmp_path):
    path = write_recipe("odd", data={"dataset": "digits", "batch_size": 63}, **QUICK)
    result = cli("build", path, "--nproc", "2")
    assert result.exit_code == 2
    assert "data.batch_size" in result.output and "63" in result.output and "multiple of 2" in result.output
    assert not (tmp_path / "runs" / "odd").exists()


def stage_images(data, workers: int, seeds: list[int]) -> list[torch.Tensor]:
    from dataclasses import replace

    from edgekd.data.bundle import close_loader

    loader = replace(data, num_workers=workers, persistent_workers=True).stage_loader("train")
    epochs = []
    try:
        for seed in seeds:
            loader.batch_sampler.set_epoch(seed)
            epochs.append(torch.cat([images for images, _ in loader]))
    finally:
        close_loader(loader)
    return epochs


def test_persistent_workers_draw_what_fresh_workers_draw():
    """Per-image augmentation seeds: a stage loader's epoch depends on its seed alone, not on how many
    workers drew it or what they drew before (so a resumed run repeats an uninterrupted one)."""
    from edgekd.config.data import DataConfig
    from edgekd.data import DataPlan

    data = DataPlan(DataConfig(dataset="digits", augment="crop_flip", batch_size=64), None).student(0)
    one_worker = stage_images(data, 1, [11, 12])
    two_workers = stage_images(data, 2, [12])
    assert torch.equal(one_worker[1], two_workers[0])
    assert not torch.equal(one_worker[0], one_worker[1])  # another epoch, another order and augmentation
    plain = torch.cat([images for images, _ in data.eval_loader("train")])
    assert not torch.equal(one_worker[1].sort(0).values, plain.sort(0).values)  # augmented


def test_persistent_workers_build_is_deterministic(write_recipe, cli, tmp_path):
    data = {
        "dataset": "digits",
        "batch_size": 128,
        "augment": "crop",
        "num_workers": 2,
        "persistent_workers": True,
    }
    histories = []
    for name in ("persist_a", "persist_b"):
        build(cli, write_recipe(name, data=data, train=TRAIN, **QUICK))
        history = json.loads((tmp_path / "runs" / name / "history.json").read_text())
        histories.append({k: [r["train_loss"] for r in rows] for k, rows in history.items()})
    assert histories[0] == histories[1]


def test_persistent_workers_need_workers(write_recipe, cli):
    result = cli("build", write_recipe("noworkers", data={"dataset": "digits", "persistent_workers": True}))
    assert result.exit_code == 2 and "persistent_workers" in result.output and "num_workers" in result.output
