"""Sizing a student to a latency budget on this machine: how long it takes, and how well the latency timed at
sizing time (random weights, BatchNorm statistics and INT8 calibration from real images) predicts the
trained artifact's measured latency.

Per budget of recipes/quickstart_latency.yaml (OpenVINO INT8, batch 1, p50, one thread): a build with an
empty latency cache (cold sizing: members exported and timed), then the same sizing again from the cache
(warm: `edgekd validate` or a second build), and the shipped artifact's p50 against what sizing predicted
for the chosen member. Baselines are dropped (they do not change the shipped student); the teacher is
trained once and loaded by the other builds.

Writes benchmarks/results/latency_sizing.json:

    python benchmarks/latency_sizing.py [--budgets 0.03,0.05,0.1]
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

from specialization import machine_record  # the digits benchmarks' shared helpers (same folder)

from edgekd.bench import environment_record
from edgekd.config.loading import load_recipe
from edgekd.layout import RunLayout
from edgekd.pipeline import build
from edgekd.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart_latency.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "latency_sizing.json"
TARGET_RATIO_BAND = 0.15  # the target: measured / predicted within 15 %


def size_and_build(budget_ms: float, work: Path, teacher: Path | None) -> dict[str, Any]:
    cache = work / f"cache-{budget_ms:g}"
    overrides = [
        f"student.budget.latency.limit_ms={budget_ms}",
        f"student.budget.latency.cache_dir={cache}",
        f"output_dir={work / 'runs'}",
        f"name=latency-{budget_ms:g}ms",
        "distill.baselines=[]",
    ]
    if teacher is not None:
        overrides += ["teacher.train=null", f"teacher.checkpoint={teacher}"]
    recipe = load_recipe(RECIPE, overrides)
    started = time.perf_counter()
    metrics = build(recipe, force=True)
    build_s = time.perf_counter() - started
    cold = metrics.student_choice.sizing
    warm_started = time.perf_counter()
    warm = prepare(recipe).student_choice.sizing  # what `edgekd validate` or a second build does
    warm_total_s = time.perf_counter() - warm_started
    check = metrics.budget_check.latency
    ratio = check.measured_ms / check.predicted_ms
    return {
        "budget_ms": budget_ms,
        "chosen": cold.chosen,
        "params": metrics.student_choice.params,
        "cold_sizing_s": cold.time_s,
        "cold_members_timed": cold.measured,
        "members_inferred": cold.inferred,
        "members_in_family": len(cold.candidates),
        "warm_sizing_s": warm.time_s,
        "warm_members_timed": warm.measured,
        "warm_prepare_total_s": round(warm_total_s, 2),
        "predicted_p50_ms": check.predicted_ms,
        "measured_p50_ms": check.measured_ms,
        "measured_over_predicted": round(ratio, 3),
        "within_15_percent": abs(ratio - 1) <= TARGET_RATIO_BAND,
        "verdict": check.verdict,
        "build_s": round(build_s, 1),
        "candidates": [
            {"member": row.member, "p50_ms": row.latency_ms, "source": row.source, "fits": row.fits}
            for row in cold.candidates
            if row.latency_ms is not None
        ],
        "teacher": str(RunLayout(recipe.run_dir).model_weights("teacher")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.03,0.05,0.1", help="Latency limits in ms, comma-separated.")
    args = parser.parse_args()
    budgets = [float(text) for text in args.budgets.split(",")]
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, teacher = [], None
    with tempfile.TemporaryDirectory(prefix="edgekd-latency-sizing-") as folder:
        for budget in budgets:
            row = size_and_build(budget, Path(folder), teacher)
            teacher = teacher or Path(row.pop("teacher"))
            row.pop("teacher", None)
            rows.append(row)
            print(
                f"{budget:g} ms: {row['chosen']} — sizing {row['cold_sizing_s']:.1f} s cold "
                f"({row['cold_members_timed']} timed), {row['warm_sizing_s']:.1f} s warm; p50 predicted "
                f"{row['predicted_p50_ms']:.4f} ms, measured {row['measured_p50_ms']:.4f} ms "
                f"(x{row['measured_over_predicted']:.2f}), {row['verdict']}"
            )
        ratios = [row["measured_over_predicted"] for row in rows]
        result = {
            "benchmark": "latency sizing: time to size, predicted (random weights) vs trained artifact latency",
            "command": "python benchmarks/latency_sizing.py --budgets " + args.budgets,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "recipe": str(RECIPE.relative_to(ROOT)),
            "environment": environment_record(1).to_dict(),
            "machine": machine_record(load_before),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "settings": {
                "target": "openvino int8, batch 1, p50, 1 thread (the recipe's budget section)",
                "timing": "the recipe's benchmark section (warm-up 10 runs and 0.3 s, then 50 runs and 1 s)",
                "builds": "baselines dropped; the teacher trained by the first build, loaded by the others",
                "cold": "an empty latency cache per budget: every timed member exported and timed",
                "warm": "the same sizing again, read from that cache (as edgekd validate / a second build)",
            },
            "target": {"measured_over_predicted_within": TARGET_RATIO_BAND},
            "budgets": rows,
            "summary": {
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_median": statistics.median(ratios),
                "all_within_15_percent": all(row["within_15_percent"] for row in rows),
                "cold_sizing_s_max": max(row["cold_sizing_s"] for row in rows),
                "warm_sizing_s_max": max(row["warm_sizing_s"] for row in rows),
            },
            "wall_s": round(time.perf_counter() - started, 1),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
