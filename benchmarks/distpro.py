"""DistPro (paper 002) on the embedded digits: a searched process against equal weights at short schedules.

Runs the real CLI, ``edgekd build recipes/digits_distpro.yaml --seeds 0,1,2,3,4 --set train.epochs=N`` for
N = 10, 20 and 40 replay epochs, each in a subprocess into a temporary folder. Records, per schedule, each
model's test accuracy (mean ± sample std, each seed's value) and its paired difference to `distpro_equal` (the
same pathways equally weighted) with the 95 % interval edgekd computed; the search's cost (its time, steps and
passes, from the stage records) against one replay run; and keeps the first seed's searched process as a plot
(benchmarks/results/distpro_process.png). Target, the paper's direction: the searched process beats equal
weights, most at the shortest schedule.

    python benchmarks/distpro.py [--seeds 0,1,2,3,4] [--epochs 10,20,40] [--results F] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from specialization import command_line, machine_record, model_rows, print_models, run_build

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits_distpro.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "distpro.json"
PLOT = ROOT / "benchmarks" / "results" / "distpro_process.png"
REFERENCE = "distpro_equal"


def stage_costs(metrics: dict[str, Any]) -> dict[str, Any]:
    """The search's cost against one replay, over the seeds of the main model."""
    (main,) = [record for record in metrics["models"] if record["name"] == "distpro"]
    runs = [run["stages"] for run in main.get("per_seed", [])] or [main["stages"]]
    search = [next(s for s in stages if s["stage"] == "search") for stages in runs]
    replay = [next(s for s in stages if s["stage"] == "replay") for stages in runs]
    return {
        "search_time_s_mean": round(statistics.mean(s["train_time_s"] for s in search), 2),
        "replay_time_s_mean": round(statistics.mean(s["train_time_s"] for s in replay), 2),
        "search_over_replay": round(
            statistics.mean(s["train_time_s"] for s in search)
            / statistics.mean(r["train_time_s"] for r in replay),
            2,
        ),
        "search_epochs": search[0]["epochs"],
        "replay_epochs": replay[0]["epochs"],
        "search_measures": search[0]["measures"],
        "search_images": search[0]["data"],
    }


def run_schedule(epochs: int, seeds: str, overrides: list[str], keep_plot: bool) -> dict[str, Any]:
    settings = [f"train.epochs={epochs}", *overrides]
    with tempfile.TemporaryDirectory() as output_dir:
        elapsed, metrics = run_build(RECIPE, seeds, output_dir, settings)
        if keep_plot:
            (run_dir,) = [path for path in Path(output_dir).iterdir() if path.is_dir()]
            shutil.copyfile(run_dir / "distillation_process.png", PLOT)
    rows = model_rows(metrics)
    paired = rows["distpro"]["paired_vs_reference"]
    return {
        "command": command_line(RECIPE, seeds, settings),
        "wall_time_s": round(elapsed, 1),
        "models": rows,
        "cost": stage_costs(metrics),
        "target": {
            "distpro_vs_equal": {
                "mean_pts": paired["mean"],
                "interval": paired["interval"],
                "interval_method": paired["interval_method"],
                "excludes_zero_above": paired["verdict"] == "better",
            }
        },
        "data": metrics["data"],
        "environment": metrics["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", default="10,20,40", help="replay epochs, one build each")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    schedules = {}
    for index, epochs in enumerate(int(e) for e in args.epochs.split(",")):
        schedules[f"{epochs}_epochs"] = run_schedule(epochs, args.seeds, args.overrides, keep_plot=index == 0)
    elapsed = time.perf_counter() - started
    shortest = min(schedules, key=lambda name: int(name.split("_")[0]))
    gains = {name: s["target"]["distpro_vs_equal"]["mean_pts"] for name, s in schedules.items()}
    result = {
        "benchmark": "DistPro on digits: searched process vs equal weights, use-α_T, KD, scratch at short "
        f"schedules; mean ± sample std over seeds, paired differences to {REFERENCE}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(elapsed, 1),
        "schedules": schedules,
        "targets": {
            "process_beats_equal_at": [
                n for n, s in schedules.items() if s["target"]["distpro_vs_equal"]["excludes_zero_above"]
            ],
            "largest_gain_at_shortest": max(gains, key=gains.get) == shortest,
        },
        "process_plot": str(PLOT.relative_to(ROOT)),
        "machine": machine_record(load_before),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for name, schedule in schedules.items():
        cost = schedule["cost"]
        print(f"{name} (search {cost['search_time_s_mean']} s vs replay {cost['replay_time_s_mean']} s):")
        print_models(schedule["models"], REFERENCE)
    print(json.dumps(result["targets"]))
    print(f"wrote {args.results} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
