"""Cross-task distillation (REFILLED, paper 003) on the embedded digits, over several seeds.

Runs the real CLI, ``edgekd build recipes/digits_crosstask.yaml --seeds 0,1,2,3,4``, in a subprocess into a
temporary folder: a teacher trained on digits 0-4, students for digits 5-9 with 10 labelled images per
class. Records every model's test accuracy (mean ± sample std, each seed's value), the NMI of its embedding,
what data it used, and its paired difference to `scratch` with the 95 % interval edgekd computed; then the
paper's direction as targets:

    REFILLED > RKD (+ fine-tuning) > scratch in mean test accuracy, and
    REFILLED's paired interval against scratch excludes zero (above it).

Writes benchmarks/results/crosstask.json (or --results):

    python benchmarks/crosstask.py [--seeds 0,1,2,3,4] [--results F] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from specialization import (  # the digits benchmarks' shared runner (same folder)
    command_line,
    machine_record,
    model_rows,
    run_build,
    write_and_print,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits_crosstask.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "crosstask.json"


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    mean = {name: row["test_acc_mean"] for name, row in rows.items()}
    paired = rows["refilled"]["paired_vs_reference"]
    return {
        "order_refilled_gt_rkd_ft_gt_scratch": mean["refilled"] > mean["rkd_ft"] > mean["scratch"],
        "refilled_vs_scratch": {
            "mean_pts": paired["mean"],
            "interval": paired["interval"],
            "interval_method": paired["interval_method"],
            "excludes_zero_above": paired["verdict"] == "better",
        },
        "rkd_ft_vs_scratch_mean_pts": rows["rkd_ft"]["paired_vs_reference"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as output_dir:
        elapsed, metrics = run_build(RECIPE, args.seeds, output_dir, args.overrides)
    rows = model_rows(metrics)
    result = {
        "benchmark": "cross-task: a teacher of digits 0-4, students of digits 5-9 (10 labels per class), "
        "mean ± sample std over seeds",
        "command": command_line(RECIPE, args.seeds, args.overrides),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(elapsed, 1),
        "data": metrics["data"],
        "models": rows,
        "targets": targets(rows),
        "machine": machine_record(load_before),
        "environment": metrics["environment"],
    }
    write_and_print(result, args.results, elapsed)


if __name__ == "__main__":
    main()
