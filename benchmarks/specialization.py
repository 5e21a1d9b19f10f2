"""The specialization scenario (SKD, paper 001) on the embedded digits, over several seeds.

Runs the real CLI, ``edgekd build recipes/digits_specialize.yaml --seeds 0,1,2,3,4``, in a subprocess into a
temporary folder and records every student's test accuracy (mean ± sample std over the seeds, and each
seed's value), its parameters, what data it used, and its paired difference to the reference baseline
(`scratch`) with the 95 % interval edgekd computed; then the issue's target:

    the main method's paired interval against scratch excludes zero (above it).

Writes benchmarks/results/specialization.json (or --results):

    python benchmarks/specialization.py [--seeds 0,1,2,3,4] [--recipe recipes/digits_specialize.yaml]
        [--results F] [--set data.unlabeled=subset ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekd.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "specialization.json"


def run_build(
    recipe: Path, seeds: str, output_dir: str, overrides: list[str]
) -> tuple[float, dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "edgekd.cli",
        "build",
        str(recipe),
        "--quiet",
        "--seeds",
        seeds,
        "--set",
        f"output_dir={output_dir}",
    ]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    (run_dir,) = [path for path in Path(output_dir).iterdir() if path.is_dir()]  # not the lock file
    return elapsed, json.loads(RunLayout(run_dir).metrics.read_text())


def model_rows(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {}
    for record in metrics["models"]:
        rows[record["name"]] = {
            "test_acc_mean": record["test_acc"],
            "test_acc_std": record.get("test_acc_std", 0.0),
            "test_acc_per_seed": [run["test_acc"] for run in record.get("per_seed", [record])],
            "val_acc_mean": record["val_acc"],
            "test_nmi_mean": record.get("test_nmi"),
            "params": record["params"],
            "fits_budget": record.get("fits_budget"),
            "labelled_images": record.get("labelled_images"),
            "unlabeled_images": record.get("unlabeled_images", 0),
            "paired_vs_reference": record.get("paired"),
        }
        if "student_task_test_acc" in record:  # the teacher, judged on the student's classes only
            rows[record["name"]]["test_acc_on_student_classes"] = record["student_task_test_acc"]
    return rows


def target_checks(rows: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    paired = rows[method]["paired_vs_reference"]
    checks: dict[str, Any] = {}
    if paired is not None:
        checks[f"{method}_vs_{paired['reference']}"] = {
            "mean_pts": paired["mean"],
            "interval": paired["interval"],
            "interval_method": paired["interval_method"],
            "excludes_zero_above": paired["verdict"] == "better",
        }
    checks["teacher_params_over_student"] = round(rows["teacher"]["params"] / rows[method]["params"], 1)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "digits_specialize.yaml")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override passed to edgekd build (repeatable), e.g. data.unlabeled=subset",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as output_dir:
        elapsed, metrics = run_build(args.recipe, args.seeds, output_dir, args.overrides)
    method = next(record["name"] for record in metrics["models"] if record.get("is_main"))
    rows = model_rows(metrics)
    result = {
        "benchmark": "specialization: students on a class subset, few-shot, mean ± sample std over seeds",
        "command": command_line(args.recipe, args.seeds, args.overrides),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(elapsed, 1),
        "data": metrics["data"],
        "models": rows,
        "targets": target_checks(rows, method),
        "machine": machine_record(load_before),
        "environment": metrics["environment"],
    }
    write_and_print(result, args.results, elapsed)


def command_line(recipe: Path, seeds: str, overrides: list[str]) -> str:
    parts = [f"edgekd build {recipe.resolve().relative_to(ROOT)} --seeds {seeds}"]
    return " ".join(parts + [f"--set {override}" for override in overrides])


def machine_record(load_before: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_before": [round(x, 2) for x in load_before],
    }


def print_models(models: dict[str, dict[str, Any]], reference: str, width: int = 15) -> None:
    """A line per model: test accuracy mean ± std and its paired difference to `reference`."""
    for name, row in models.items():
        paired = row["paired_vs_reference"]
        versus = ""
        if paired is not None and paired["interval"] is not None:
            low, high = paired["interval"]
            versus = f"  Δ vs {reference} {paired['mean']:+.2f} [{low:+.2f}, {high:+.2f}] {paired['verdict']}"
        print(f"{name:>{width}}: {row['test_acc_mean']:6.2f} ± {row['test_acc_std'] or 0.0:.2f}{versus}")


def write_and_print(result: dict[str, Any], path: Path, elapsed: float) -> None:
    """Write the results file, then a line per model (mean ± std, NMI, paired Δ) and the targets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["models"].items():
        paired = row["paired_vs_reference"]
        versus = ""
        if paired is not None and paired["interval"] is not None:
            low, high = paired["interval"]
            versus = f"  Δ vs {paired['reference']} {paired['mean']:+.2f} [{low:+.2f}, {high:+.2f}] {paired['verdict']}"
        nmi = f"  NMI {row['test_nmi_mean']:.3f}" if row.get("test_nmi_mean") is not None else ""
        print(
            f"{name:>20}: {row['test_acc_mean']:6.2f} ± {row['test_acc_std']:.2f}  ({row['params']} params)"
            f"{nmi}{versus}"
        )
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
