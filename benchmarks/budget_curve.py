"""Where each method pays off: the shipped digits comparisons at total budgets of 30, 100 and 300 epochs.

For each of the four papers' digits recipes (few-shot SRM, cross-task REFILLED, specialization SKD, DistPro)
and each budget B, runs the real CLI, ``edgekd build recipes/<recipe>.yaml --seeds 0,1,2,3,4 --set
train.epochs=B ...``, in a subprocess into a temporary folder, and records every model's test accuracy
(mean ± sample std, each seed's value), its paired difference to the recipe's reference with the 95 %
interval edgekd computed, and how the main method spent the budget (each stage's epochs and the epoch its
selection kept, per seed: a stage that keeps its last epochs was still improving when it stopped).

The budget is ``train.epochs``, the one number a user sets. The recipes that pin a stage's epochs (SRM's
pre-training, FitNet's hint stage, SRM's dictionaries) are scaled with it: a value pinned at 300 epochs is
multiplied by B/300, so each recipe's split of its budget is the same at every budget. SRM's and FitNet's
transfer check hands nothing on and is switched off here. Baselines that are over the budget anyway
(fine-tuning the teacher) are left out to save compute; DistPro's search (10 epochs on the training split)
is the same at every budget and counted apart, as `edgekd validate` prints it.

Every method of a recipe runs on the same seeds and data draws at every budget; nothing is chosen here.
Writes benchmarks/results/budget_curve.json (or --results):

    python benchmarks/budget_curve.py [--seeds 0,1,2,3,4] [--budgets 30,100,300] [--recipes srm,refilled,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
RESULTS = ROOT / "benchmarks" / "results" / "budget_curve.json"
RECIPE_BUDGET = 300  # the train.epochs every digits recipe but DistPro's ships with


def scaled(epochs: int, budget: int) -> int:
    """A stage length the recipe pins at RECIPE_BUDGET epochs, at `budget` epochs."""
    return max(1, round(epochs * budget / RECIPE_BUDGET))


@dataclass(frozen=True)
class Comparison:
    """One shipped recipe as the benchmark runs it."""

    recipe: str
    method: str
    reference: str
    baselines: list[str]
    # the --set overrides a budget needs besides train.epochs (stage lengths scaled with it)
    scale: Callable[[int], list[str]] = field(default=lambda budget: [])
    fixed: list[str] = field(default_factory=list)


def srm_scale(budget: int) -> list[str]:
    pretrain = scaled(133, budget)
    return [
        f"distill.srm.pretrain_epochs={pretrain}",
        f"distill.fitnet.hint_epochs={pretrain}",
        f"distill.stages.srm.dictionaries.epochs={scaled(150, budget)}",
    ]


COMPARISONS = {
    "srm": Comparison(
        "digits_srm_fewshot.yaml",
        "srm",
        "kd",
        ["scratch", "kd", "fitnet"],
        srm_scale,
        ["distill.srm.transfer_check=null", "distill.fitnet.transfer_check=null"],
    ),
    "refilled": Comparison(
        "digits_crosstask.yaml", "refilled", "scratch", ["scratch", "rkd_ft"], fixed=["distill.probes=[]"]
    ),
    "skd": Comparison("digits_specialize.yaml", "skd", "scratch", ["scratch", "kd"]),
    "distpro": Comparison(
        "digits_distpro.yaml", "distpro", "distpro_equal", ["distpro_equal", "kd", "scratch"]
    ),
}


def overrides(comparison: Comparison, budget: int, baselines: list[str] | None = None) -> list[str]:
    baselines = "[" + ", ".join(baselines or comparison.baselines) + "]"
    return [
        f"train.epochs={budget}",
        f"distill.baselines={baselines}",
        f"report.reference={comparison.reference}",
        *comparison.fixed,
        *comparison.scale(budget),
    ]


def stage_spend(metrics: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """Each stage of `method`: its epochs and, per seed, the epoch its selection kept (1-based, as the
    trainer records it)."""
    record = next(model for model in metrics["models"] if model["name"] == method)
    runs = [run["stages"] for run in record.get("per_seed", [])] or [record.get("stages", [])]
    spend = []
    for index, stage in enumerate(runs[0]):
        kept = [run[index].get("best_epoch") for run in runs]  # 1-based already
        spend.append(
            {
                "stage": stage["stage"],
                "epochs": stage["epochs"],
                "select": stage["select"],
                "kept_epoch_per_seed": kept,
                "best_val_acc_per_seed": [run[index].get("best_val_acc") for run in runs],
                "best_score_per_seed": [run[index].get("best_score") for run in runs],
            }
        )
    return spend


def run_comparison(name: str, budget: int, seeds: str, baselines: list[str] | None = None) -> dict[str, Any]:
    comparison = COMPARISONS[name]
    recipe = ROOT / "recipes" / comparison.recipe
    settings = overrides(comparison, budget, baselines)
    with tempfile.TemporaryDirectory() as output_dir:
        elapsed, metrics = run_build(recipe, seeds, output_dir, settings)
    rows = model_rows(metrics)
    paired = rows[comparison.method]["paired_vs_reference"]
    return {
        "command": command_line(recipe, seeds, settings),
        "wall_time_s": round(elapsed, 1),
        "models": rows,
        "main_method_stages": stage_spend(metrics, comparison.method),
        "main_vs_reference": {
            "reference": comparison.reference,
            "mean_pts": paired["mean"],
            "interval": paired["interval"],
            "interval_method": paired["interval_method"],
            "verdict": paired["verdict"],
        },
        "data": metrics["data"],
        "environment": metrics["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--budgets", default="30,100,300")
    parser.add_argument("--recipes", default=",".join(COMPARISONS), help="of " + ", ".join(COMPARISONS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results file")
    parser.add_argument(
        "--add", action="store_true", help="add these runs to an existing results file (same machine)"
    )
    parser.add_argument(
        "--baselines",
        help="comma-separated baselines instead of each recipe's (the reference must be among them), e.g. to "
        "measure a long budget at the main method and its reference only",
    )
    args = parser.parse_args()
    budgets = [int(budget) for budget in args.budgets.split(",")]
    names = args.recipes.split(",")
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = json.loads(args.results.read_text()) if args.add else new_result(args.seeds, load_before)
    for name in names:
        comparison = COMPARISONS[name]
        result["comparisons"].setdefault(name, {"recipe": f"recipes/{comparison.recipe}", "budgets": {}})
        for budget in budgets:
            baselines = args.baselines.split(",") if args.baselines else None
            run = run_comparison(name, budget, args.seeds, baselines)
            result["comparisons"][name]["budgets"][str(budget)] = run
            print(f"== {name} at {budget} epochs ({run['wall_time_s']:.0f} s)", flush=True)
            print_models(run["models"], comparison.reference)
            write(result, args.results)  # after every build: a long run keeps what it measured
    invocation = f"python benchmarks/budget_curve.py --seeds {args.seeds} --budgets {args.budgets}"
    if args.baselines:
        invocation += f" --baselines {args.baselines}"
    result.setdefault("invocations", []).append(
        {
            "argv": f"{invocation} --recipes {args.recipes}",
            "code": source_commit(),
            "wall_time_s": round(time.perf_counter() - started, 1),
        }
    )
    write(result, args.results)
    print(f"wrote {args.results}")


def new_result(seeds: str, load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "benchmark": "budget curve: each paper's digits comparison at several train.epochs budgets, paired "
        "against the recipe's reference over seeds",
        "seeds": seeds,
        "comparisons": {},
        "machine": machine_record(load_before),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def source_commit() -> str:
    """The commit the builds ran (with '+changes' when the working tree differed from it)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "edgekd") else "")


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
