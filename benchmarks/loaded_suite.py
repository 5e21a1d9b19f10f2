"""The whole test suite on a deliberately busy machine: tests must wait on events, not on the clock.

Starts ``--spinners`` busy-loop processes (default: one per usable core, so the suite shares every core with
a process that never yields), runs the test command, stops the spinners however it ends, and writes
benchmarks/results/loaded_suite.json: the machine, the load the suite ran under (the kernel's load average
sampled every few seconds, and the CPU time the spinners took), pytest's closing line and exit code, and the
wall time next to the same suite's time on a quiet machine where the caller gives one.

    python benchmarks/loaded_suite.py [--spinners 2] [-- pytest arguments, default: -q]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "loaded_suite.json"
SPIN = "while True:\n    pass\n"


def start_spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True) for _ in range(count)]


def stop_spinners(spinners: list[subprocess.Popen]) -> float:
    """Stop them; the CPU seconds they used (what the suite had to share the cores with)."""
    cpu = 0.0
    for spinner in spinners:
        os.killpg(spinner.pid, signal.SIGKILL)
        _, _, usage = os.wait4(spinner.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


class LoadSampler(threading.Thread):
    """The one-minute load average every `every_s` seconds until stopped."""

    def __init__(self, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples = every_s, []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])


def closing_line(output: str) -> str:
    lines = [line for line in output.splitlines() if " passed" in line or " failed" in line]
    return lines[-1].strip("= ") if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spinners", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("pytest_args", nargs="*", default=["-q"])
    args = parser.parse_args()

    command = [sys.executable, "-m", "pytest", *args.pytest_args]
    spinners = start_spinners(args.spinners)
    sampler = LoadSampler()
    sampler.start()
    started = time.monotonic()
    try:
        suite = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    finally:
        wall = time.monotonic() - started
        sampler.stopped.set()
        spinner_cpu = stop_spinners(spinners)
    sys.stdout.write(suite.stdout[-5000:])
    sys.stderr.write(suite.stderr[-2000:])
    samples = sampler.samples
    result = {
        "command": " ".join(["python", "benchmarks/loaded_suite.py", *sys.argv[1:]]),
        "suite_command": " ".join(["python", "-m", "pytest", *args.pytest_args]),
        "machine": {
            "cpu": _cpu_model(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "spinners": args.spinners,
        "spinner_cpu_s": round(spinner_cpu, 1),
        "load_average_1m": {
            "min": min(samples, default=None),
            "median": sorted(samples)[len(samples) // 2] if samples else None,
            "max": max(samples, default=None),
        },
        "wall_s": round(wall, 1),
        "exit_code": suite.returncode,
        "closing_line": closing_line(suite.stdout),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(suite.returncode)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
