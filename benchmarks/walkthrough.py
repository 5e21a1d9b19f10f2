"""The README's walk-through "Your images, your teacher", timed step by step on a real image folder.

Writes scikit-learn's 1,797 digits as a grayscale ImageFolder (`train/` 80 %, `val/` 20 %, one folder per
class, named zero..nine, upscaled to --size pixels), then runs the README's blocks as written: its
`train_teacher.py` (plain torchvision, no edgekd), `edgekd validate --explain my_recipe.yaml` and
`edgekd build my_recipe.yaml`, each in a subprocess. Records each step's wall and CPU time, what the build
chose and measured (teacher, students, shipped student, artifacts), the machine and library versions.

    python benchmarks/walkthrough.py [--size 28] [--results F]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "walkthrough.json"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def readme_blocks() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    return dict(re.findall(r"<!-- walkthrough: (\S+) -->\n```\w*\n(.*?)```", readme, flags=re.DOTALL))


def write_folder(root: Path, size: int) -> dict[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    counts = {"train": 0, "val": 0}
    for rank, index in enumerate(order):
        split = "val" if rank % 5 == 0 else "train"
        pixels = (digits.images[index] / 16 * 255).astype(np.uint8)
        folder = root / split / NAMES[digits.target[index]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(folder / f"{index:04d}.png")
        counts[split] += 1
    return counts


def timed(command: list[str], cwd: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "stdout": done.stdout}


def build_summary(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models = {
        record["name"]: {
            "role": record["role"],
            "arch": record["arch"],
            "params": record["params"],
            "val_acc": record["val_acc"],
            "test_acc": record["test_acc"],
            "train_time_s": record.get("train_time_s"),
        }
        for record in metrics["models"]
    }
    artifacts = [
        {
            "model": record.get("model"),
            "artifact": record["name"],
            "status": record["status"],
            "test_acc": record["test_acc"],
            "p50_ms_b1": next(
                (b["p50_ms"] for b in (record.get("latency") or {}).get("batches", []) if b["batch"] == 1),
                None,
            ),
        }
        for record in metrics["artifacts"]
    ]
    return {
        "models": models,
        "shipped": metrics.get("shipped"),
        "warnings": metrics.get("warnings", []),
        "artifacts": artifacts,
        "input_spec": metrics["data"]["student"]["input_spec"],
        "environment": metrics["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28, help="Side of the written images, in pixels.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    blocks = readme_blocks()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        counts = write_folder(work / "my_images", args.size)
        (work / "train_teacher.py").write_text(blocks["train_teacher.py"])
        (work / "my_recipe.yaml").write_text(blocks["my_recipe.yaml"])
        steps = {"train_teacher.py (plain torchvision)": timed([sys.executable, "train_teacher.py"], work)}
        for line in blocks["commands"].strip().splitlines():
            command = shlex.split(line)
            steps[line] = timed([sys.executable, "-m", "edgekd", *command[1:]], work)
        validated = steps[blocks["commands"].strip().splitlines()[0]].pop("stdout")
        for step in steps.values():
            step.pop("stdout", None)
        summary = build_summary(work / "runs" / "my_images")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results = {
        "benchmark": "the README walk-through on the digits as a grayscale ImageFolder",
        "command": f"python benchmarks/walkthrough.py --size {args.size}",
        "code": commit.stdout.strip() or None,
        "folder": {"images": counts, "size": args.size, "classes": len(NAMES), "channels": 1},
        "steps": steps,
        "validate_said": [line for line in validated.splitlines() if line.startswith(("data:", "  "))][:3],
        **summary,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    for step, figures in steps.items():
        print(f"{step}: {figures['wall_s']} s wall, {figures['cpu_s']} s CPU")
    print(f"shipped: {results['shipped']['model'] if results['shipped'] else '?'}; results: {args.results}")


if __name__ == "__main__":
    main()
