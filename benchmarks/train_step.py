"""The distillation step against its floor: per method, the time of edgekd's real training step
(Trainer.train_step: hooks, connectors, loss terms, the NaN check, the logging syncs) against the least such
a step can cost — one student forward + backward + optimizer step and one teacher forward without gradients,
timed in the same run, interleaved round by round so a burst of load hits every variant alike.

CIFAR-size pair (wrn_40_2 teacher, wrn_16_2 student, 3×32×32 inputs; scikit-learn's digits resized to 32×32
in 3 channels stand in for CIFAR images: the step's cost depends on the shapes, not the pixels), batch 64,
SGD with momentum, on this machine's CPU; GPU rows need a lent GPU and say so when there is none.

Writes benchmarks/results/train_step.json:

    python benchmarks/train_step.py [--methods kd,at,ofd,skd,fitnet,rkd] [--rounds 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgekd.bench import environment_record
from edgekd.data import DataPlan
from edgekd.distill import DistillContext
from edgekd.distill.registry import get_method
from edgekd.models import count_params, create_model
from edgekd.recipe import DataConfig, OptimizerConfig, TrainConfig
from edgekd.train import Trainer
from edgekd.train.optim import build_optimizer
from edgekd.train.trainer import EpochTally

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_step.json"
TEACHER, STUDENT, BATCH = "wrn_40_2", "wrn_16_2", 64
TARGET_KD_OVER_FLOOR = 1.10
OPTIMIZER = OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)


def student_data():
    config = DataConfig(dataset="digits", image_size=32, channels=3, batch_size=BATCH, last_batch="drop")
    return DataPlan(config, None).student(0)


def fixed_batches(data, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for images, labels in data.train_loader(0):
        batches.append((images, labels))
        if len(batches) == count:
            return batches
    raise SystemExit(f"only {len(batches)} batches of {BATCH} in the data; ask for fewer steps")


def distillation_stage(method: str):
    """The method's stage that distils (the last that is not a check), its objective class and options."""
    entry = get_method(method)
    options = entry.options()
    stages = [stage for stage in entry.plan(options, TrainConfig(epochs=1)) if not stage.branch]
    return stages, options


def method_trainer(method: str, stage_name: str | None, data, teacher, folder: Path) -> tuple[Trainer, str]:
    stages, options = distillation_stage(method)
    stage = next(s for s in stages if s.name == stage_name) if stage_name else stages[-1]
    torch.manual_seed(0)
    student = create_model(STUDENT, data.num_classes, 3)
    context = DistillContext(data.num_classes, tuple(range(data.num_classes)), input_shape=(3, 32, 32))
    objective = stage.objective(student, teacher, options, context)
    trainer = Trainer(
        objective,
        data,
        TrainConfig(epochs=1, optimizer=OPTIMIZER),
        seed=0,
        out_dir=folder / f"{method}-{stage.name}",
        device=torch.device("cpu"),
        label=method,
    )
    objective.prepare_stage(data, torch.device("cpu"))  # lazily computed state (margins, centres) first
    objective.train()
    return trainer, stage.name


def floor_step(teacher, data):
    """The least a KD step can cost: student forward + backward + step, teacher forward without gradients."""
    torch.manual_seed(0)
    student = create_model(STUDENT, data.num_classes, 3).train()
    optimizer = build_optimizer(list(student.parameters()), OPTIMIZER, 1.0)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.inference_mode():
            teacher(images)
        loss = F.cross_entropy(student(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step, batches, warmup: int) -> list[float]:
    for images, labels in batches[:warmup]:
        step(images, labels)
    durations = []
    for images, labels in batches[warmup:]:
        started = time.perf_counter()
        step(images, labels)
        durations.append((time.perf_counter() - started) * 1e3)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="kd,at,ofd,skd,fitnet,rkd")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="Timed steps per variant and round.")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_before = os.getloadavg()
    started = time.perf_counter()
    data = student_data()
    batches = fixed_batches(data, args.warmup + args.steps)
    torch.manual_seed(1)
    teacher = create_model(TEACHER, data.num_classes, 3).eval()
    variants: dict[str, Any] = {"floor": floor_step(teacher, data)}
    extra_params: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-train-step-") as folder:
        for method in args.methods.split(","):
            stages, _ = distillation_stage(method)
            for stage in stages:
                trainer, name = method_trainer(method, stage.name, data, teacher, Path(folder))
                label = method if len(stages) == 1 else f"{method}:{name}"
                tally = EpochTally()
                variants[label] = lambda i, y, t=trainer, tally=tally: t.train_step(i, y, None, 0, tally)
                extra_params[label] = sum(
                    p.numel() for p in trainer.distiller.trainable_parameters()
                ) - count_params(trainer.distiller.student)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(args.rounds):
            for name, step in variants.items():
                times[name] += time_steps(step, batches, args.warmup if round_index == 0 else 0)
    floor = statistics.median(times["floor"])
    rows = {
        name: {
            "median_ms": round(statistics.median(values), 2),
            "min_ms": round(min(values), 2),
            "steps": len(values),
            "over_floor": round(statistics.median(values) / floor, 3),
            "overhead_ms": round(statistics.median(values) - floor, 2),
            "training_only_params": extra_params.get(name, 0),
        }
        for name, values in times.items()
    }
    result = {
        "benchmark": "distillation step against its floor (student fwd+bwd+step + teacher no-grad forward)",
        "command": "python benchmarks/train_step.py --methods "
        + args.methods
        + f" --rounds {args.rounds} --steps {args.steps}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment_record(torch.get_num_threads()).to_dict(),
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "teacher": TEACHER,
            "student": STUDENT,
            "input": [3, 32, 32],
            "batch": BATCH,
            "optimizer": OPTIMIZER.model_dump(),
            "step": "Trainer.train_step, the build's own step (no unlabelled stream)",
            "floor": "student forward + cross-entropy + backward + SGD step, teacher forward in inference_mode",
            "median": "over rounds x steps, variants interleaved round by round",
        },
        "cpu": rows,
        "gpu": "not measured: no GPU was lent to this session",
        "targets": {
            "kd_over_floor_at_most": TARGET_KD_OVER_FLOOR,
            "kd_met": rows.get("kd", {}).get("over_floor", 99) <= TARGET_KD_OVER_FLOOR,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(
            f"{name:>14}: {row['median_ms']:8.2f} ms  x{row['over_floor']:.3f} floor  (+{row['overhead_ms']:.2f} ms)"
        )
    print(f"written {RESULTS.relative_to(ROOT)} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
