"""Measure the quickstart's wall time (`edgekd build recipes/quickstart.yaml`) on this machine.

Runs the real CLI in a subprocess into a temporary output folder, repeats it, and writes
benchmarks/results/quickstart_time.json with the machine description. Target: <= 120 s on 2 CPU cores.

    python benchmarks/quickstart_time.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekd.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quickstart_time.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_one_build(output_dir: str) -> tuple[float, dict]:
    command = [
        sys.executable,
        "-m",
        "edgekd.cli",
        "build",
        str(ROOT / "recipes" / "quickstart.yaml"),
        "--quiet",
        "--set",
        f"output_dir={output_dir}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    metrics = json.loads(RunLayout(Path(output_dir) / "quickstart").metrics.read_text())
    return elapsed, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    load_before = os.getloadavg()
    times, metrics = [], {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as output_dir:
            elapsed, metrics = time_one_build(output_dir)
            times.append(round(elapsed, 2))
            print(f"quickstart wall time: {elapsed:.1f} s")
    result = {
        "benchmark": "quickstart wall time (edgekd build recipes/quickstart.yaml, subprocess, incl. start-up)",
        "wall_time_s": times,
        "median_s": statistics.median(times),
        "target_s": 120,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            # A load well above 0 before the run means other work shared the cores: times are inflated.
            "load_average_before": [round(x, 2) for x in load_before],
        },
        "accuracy": {r["name"]: r["test_acc"] for r in metrics["models"]},
        "artifacts": {
            a["name"]: {"test_acc": a["test_acc"], "status": a["status"]} for a in metrics["artifacts"]
        },
        "stage_wall_time_s": metrics["run"]["wall_time_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}: median {result['median_s']:.1f} s")


if __name__ == "__main__":
    main()
