"""The CUDA training path end to end: `edgekd build` of one CIFAR-size recipe on a GPU, in variants.

Variants (each a full build: teacher trained, KD student, FP32 ONNX exported and checked against PyTorch):
- fp32: one process, FP32, deterministic (the default);
- ddp_nccl_1proc: the same through torchrun (`--nproc 1`): a one-process NCCL DDP build;
- bf16_cl_speed: AMP bf16, channels_last, `mode: speed`, 4 loader workers with pinned memory;
- fp16: AMP fp16 (dynamic loss scale).

Data: scikit-learn's digits resized to 32×32 in 3 channels (the only data set on an offline machine; 1222
training images, so an epoch is 19 steps and a step's fixed costs weigh more than on CIFAR). Timings are
the median epoch time of the student's training (evaluation of the validation split included) and the
build's wall time; accuracy is not compared across variants (one seed, few epochs: a functional check).

    python benchmarks/gpu_build.py   # writes benchmarks/results/gpu_build.json; without CUDA, writes nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_build.json"

RECIPE: dict[str, Any] = {
    "name": "gpu_build",
    "seed": 0,
    "device": "cuda",
    "data": {"dataset": "digits", "image_size": 32, "channels": 3, "augment": "crop_flip", "batch_size": 64},
    "teacher": {"model": "wrn_40_2", "train": {"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05}}},
    "student": {"model": "wrn_16_2"},
    "distill": {"method": "kd", "baselines": []},
    "train": {"epochs": 6, "optimizer": {"name": "sgd", "lr": 0.05}},
    "export": {"targets": {"onnx": ["fp32"]}},
    "benchmark": {"enabled": False},
    "report": {"plots": False},
}
VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "fp32": ({}, []),
    "ddp_nccl_1proc": ({}, ["--nproc", "1"]),
    "bf16_cl_speed": (
        {
            "mode": "speed",
            "train": {**RECIPE["train"], "amp": "bf16", "channels_last": True},
            "teacher": {
                **RECIPE["teacher"],
                "train": {**RECIPE["teacher"]["train"], "amp": "bf16", "channels_last": True},
            },
            "data": {**RECIPE["data"], "num_workers": 4, "pin_memory": True},
        },
        [],
    ),
    "fp16": (
        {
            "train": {**RECIPE["train"], "amp": "fp16"},
            "teacher": {**RECIPE["teacher"], "train": {**RECIPE["teacher"]["train"], "amp": "fp16"}},
        },
        [],
    ),
}


def build(variant: str, folder: Path) -> dict[str, Any]:
    changes, flags = VARIANTS[variant]
    recipe = {**RECIPE, **changes, "name": variant, "output_dir": str(folder)}
    path = folder / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    started = time.perf_counter()
    command = [sys.executable, "-m", "edgekd", "build", str(path), "--quiet", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"ok": False, "exit_code": done.returncode, "stderr_tail": done.stderr[-2000:], "wall_s": wall}
    run = folder / variant
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    student_epochs = [row["epoch_time_s"] for row in history["kd"]]
    teacher_epochs = [row["epoch_time_s"] for row in history["teacher"]]
    models = {m["name"]: m for m in metrics["models"]}
    onnx = [a for a in metrics["artifacts"] if a.get("format") == "onnx"]
    return {
        "ok": True,
        "wall_s": round(wall, 2),
        "recipe_changes": changes,
        "flags": flags,
        "student_epoch_s_median": round(statistics.median(student_epochs[1:] or student_epochs), 4),
        "teacher_epoch_s_median": round(statistics.median(teacher_epochs[1:] or teacher_epochs), 4),
        "student_test_acc": models["kd"].get("test_acc"),
        "teacher_test_acc": models["teacher"].get("test_acc"),
        "run_record": metrics["run"],
        "onnx": [{"status": a.get("status"), "parity": a.get("parity")} for a in onnx],
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "gpu": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("not measured: no CUDA device (torch.cuda.is_available() is False)")
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            results[variant] = build(variant, Path(tmp))
            row = results[variant]
            if row["ok"]:
                print(
                    f"{variant:>16}: wall {row['wall_s']:6.1f} s, student epoch {row['student_epoch_s_median']:.3f} s, "
                    f"teacher epoch {row['teacher_epoch_s_median']:.3f} s, kd test {row['student_test_acc']}"
                )
            else:
                print(f"{variant:>16}: FAILED (exit {row['exit_code']}): {row['stderr_tail'][-600:]}")
    record = {
        "machine": machine(),
        "command": "python benchmarks/gpu_build.py --variants " + args.variants,
        "data": "digits resized to 3x32x32 (1222 train images, 19 steps per epoch at batch 64)",
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
