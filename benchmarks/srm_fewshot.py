"""Few-shot transfer with SRM (paper 004) on the embedded digits, over several seeds and two shot counts.

Runs the real CLI, ``edgekd build recipes/digits_srm_fewshot.yaml --seeds 0,1,2,3,4``, once with 5 and once
with 10 labelled images per class (``--set data.per_class=N``), each in a subprocess into a temporary folder:
a teacher trained on the vendor's images of all 10 digits, students trained on the customer's few images
(drawn anew for every seed, the same draw for every method of a seed). Records each model's test accuracy
(mean ± sample std, each seed's value), its paired difference to `kd` with the 95 % interval edgekd
computed, the intermediate-transfer check of SRM and FitNet (a fresh classifier trained with CE from each
pre-trained student), and the paper's direction as the target:

    SRM > KD in few-shot transfer, the paired interval excluding zero (above it).

Writes benchmarks/results/srm_fewshot.json (or --results):

    python benchmarks/srm_fewshot.py [--seeds 0,1,2,3,4] [--shots 5,10] [--results F] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from specialization import (  # the digits benchmarks' shared runner (same folder)
    command_line,
    machine_record,
    model_rows,
    print_models,
    run_build,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits_srm_fewshot.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "srm_fewshot.json"
REFERENCE = "kd"


def transfer_checks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per pre-training method, the check's validation and test accuracy per seed."""
    checks = {}
    for record in metrics["models"]:
        runs = [run["stages"] for run in record.get("per_seed", [])] or [record.get("stages", [])]
        found = [stage for stages in runs for stage in stages if stage.get("branch")]
        if found:
            checks[record["name"]] = {
                "what": found[0]["notes"],
                "val_acc_per_seed": [stage["best_val_acc"] for stage in found],
                "test_acc_per_seed": [stage["test_acc"] for stage in found],
            }
    return checks


def target(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    paired = rows["srm"]["paired_vs_reference"]
    return {
        "srm_vs_kd": {
            "mean_pts": paired["mean"],
            "interval": paired["interval"],
            "interval_method": paired["interval_method"],
            "excludes_zero_above": paired["verdict"] == "better",
        },
        "order": sorted(rows, key=lambda name: -rows[name]["test_acc_mean"]),
    }


def run_shots(shots: int, seeds: str, overrides: list[str]) -> dict[str, Any]:
    settings = [f"data.per_class={shots}", *overrides]
    with tempfile.TemporaryDirectory() as output_dir:
        elapsed, metrics = run_build(RECIPE, seeds, output_dir, settings)
    rows = model_rows(metrics)
    return {
        "command": command_line(RECIPE, seeds, settings),
        "wall_time_s": round(elapsed, 1),
        "data": metrics["data"],
        "models": rows,
        "transfer_check": transfer_checks(metrics),
        "target": target(rows),
        "environment": metrics["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--shots", default="5,10", help="labelled training images per class, one run each")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    settings = {
        f"{shots}_shot": run_shots(int(shots), args.seeds, args.overrides) for shots in args.shots.split(",")
    }
    elapsed = time.perf_counter() - started
    result = {
        "benchmark": "few-shot transfer (SRM, paper 004): students of all 10 digits from the customer's few "
        "labelled images per class, a teacher trained on the vendor's images; mean ± sample std over seeds, "
        f"paired differences to {REFERENCE}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(elapsed, 1),
        "settings": settings,
        "machine": machine_record(load_before),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for name, setting in settings.items():
        print(f"{name}:")
        print_models(setting["models"], REFERENCE)
    print(f"wrote {args.results} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
