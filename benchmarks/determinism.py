"""How far results move when only the float rounding changes: the same recipe and seeds under different
PyTorch thread counts (and a repeat of the first, which must match it bit for bit).

Another thread count splits the reductions of convolutions and matrix products differently, as another CPU
(another vendor, another ISA) does, so the spread measured here is the size of difference to expect when the
same recipe runs on another machine. Runs the real CLI in subprocesses, no export, and compares every
student's per-seed test accuracy and the paired differences against the reference baseline.

    python benchmarks/determinism.py [--recipe recipes/digits_specialize.yaml] [--seeds 0,1,2] [--threads 2,1]
        [--results benchmarks/results/determinism.json] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from specialization import run_build  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "determinism.json"


def build(recipe: Path, seeds: str, threads: int, overrides: list[str]) -> dict[str, Any]:
    """The recipe's metrics under `threads` PyTorch threads, trained only (no export, benchmark or plots)."""
    fixed = [f"threads={threads}", "export.targets={}", "benchmark.enabled=false", "report.plots=false"]
    with tempfile.TemporaryDirectory() as output_dir:
        return run_build(recipe, seeds, output_dir, [*fixed, *overrides])[1]


def per_seed(metrics: dict[str, Any]) -> dict[str, dict[int, float]]:
    out = {}
    for record in metrics["models"]:
        runs = record.get("per_seed") or [{"seed": metrics["run"]["seed"], "test_acc": record["test_acc"]}]
        out[record["name"]] = {run["seed"]: run["test_acc"] for run in runs}
    return out


def paired_means(metrics: dict[str, Any]) -> dict[str, Any]:
    return {r["name"]: r["paired"] for r in metrics["models"] if r.get("paired")}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    accs_a, accs_b = per_seed(a), per_seed(b)
    per_model = {}
    for name in accs_a:
        diffs = [accs_b[name][seed] - accs_a[name][seed] for seed in accs_a[name]]
        per_model[name] = {
            "max_abs_test_acc_diff_pts": round(max(abs(d) for d in diffs), 4),
            "seeds_changed": sum(d != 0 for d in diffs),
            "seeds": len(diffs),
        }
    paired_a, paired_b = paired_means(a), paired_means(b)
    return {
        "identical": accs_a == accs_b,
        "per_model": per_model,
        "paired_mean_shift_pts": {
            name: round(paired_b[name]["mean"] - paired_a[name]["mean"], 4) for name in paired_a
        },
        "verdicts": {name: [paired_a[name]["verdict"], paired_b[name]["verdict"]] for name in paired_a},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "digits_specialize.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", default="2,1", help="thread counts; the first is also repeated")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    started = time.perf_counter()
    runs = {f"threads={counts[0]}": build(args.recipe, args.seeds, counts[0], args.overrides)}
    runs[f"threads={counts[0]} (repeat)"] = build(args.recipe, args.seeds, counts[0], args.overrides)
    for count in counts[1:]:
        runs[f"threads={count}"] = build(args.recipe, args.seeds, count, args.overrides)
    first = f"threads={counts[0]}"
    result = {
        "benchmark": "determinism: the same recipe and seeds, repeated and under other thread counts",
        "command": f"python benchmarks/determinism.py --recipe {args.recipe.relative_to(ROOT)} --seeds "
        f"{args.seeds} --threads {args.threads}" + "".join(f" --set {o}" for o in args.overrides),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "environment": runs[first]["environment"],
        "test_acc_per_seed": {label: per_seed(metrics) for label, metrics in runs.items()},
        "comparisons": {
            label: compare(runs[first], metrics) for label, metrics in runs.items() if label != first
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["comparisons"], indent=2))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
