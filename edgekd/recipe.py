"""The recipe: one YAML file that states a whole run, validated into frozen, typed sections.

Recipes are data, never code: they are read with ``yaml.safe_load`` (no object tags) and every default lives
in the schema, so ``edgekd schema`` shows all of it. Unknown keys are errors. Each section is declared in its
own module of `edgekd.config`; this module composes them into the `Recipe` and checks what spans sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from edgekd.config.data import DataConfig, NormalizeStats
from edgekd.config.deploy import BenchmarkConfig, ExportConfig
from edgekd.config.distill import DistillConfig
from edgekd.config.models import LatencyBudgetConfig, StudentConfig, TeacherConfig
from edgekd.config.report import ReportConfig
from edgekd.config.train import DistributedConfig, TrainConfig, stage_train_config
from edgekd.config.units import LoosePath
from edgekd.schema_base import (
    MAX_SEED,
    MAX_THREADS,
    Section,
    shown_value,
)


class Recipe(Section):
    name: str = Field(
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name: the run folder is output_dir/name.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds initialization, data order and augmentation.")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None,
        min_length=1,
        max_length=1_000,
        description="Train every student once per seed and report mean ± std (the teacher is trained "
        "once, with `seed`; the data split stays fixed by data.split_seed). Unset: just `seed`.",
    )
    output_dir: LoosePath = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses a CUDA GPU when one is present."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description="PyTorch CPU threads for training and evaluation (recorded in metrics.json); null: "
        "PyTorch's default. Results are bit-exact for one thread count on one machine; another thread count "
        "or CPU changes the float rounding, hence the numbers (see the README).",
    )
    mode: Literal["deterministic", "speed"] = Field(
        "deterministic",
        description="deterministic: cuDNN autotuning off and deterministic algorithms on, so the same recipe "
        "and seed give the same numbers on one machine; speed: autotuned, non-deterministic kernels (faster "
        "on GPUs; numbers vary from run to run, and the report says so).",
    )
    distributed: DistributedConfig = Field(
        DistributedConfig(),
        description="Data-parallel training, read only under torchrun (edgekd build --nproc).",
    )
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig = DistillConfig()  # type: ignore[valid-type]
    train: TrainConfig = Field(TrainConfig(), description="How the students are trained.")
    export: ExportConfig = ExportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    report: ReportConfig = ReportConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def latency_budget(self) -> LatencyBudgetConfig | None:
        budget = self.student.budget
        return budget.latency if budget else None

    @property
    def latency_threads(self) -> int | None:
        """The thread count a latency budget is measured at: its own, else the benchmark section's."""
        budget = self.latency_budget
        if budget is None:
            return None
        return budget.threads if budget.threads is not None else self.benchmark.threads

    @property
    def latency_cache_dir(self) -> Path:
        budget = self.latency_budget
        return budget.cache_dir if budget and budget.cache_dir else self.output_dir / "latency_cache"

    @property
    def student_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @model_validator(mode="after")
    def _check_seeds(self) -> Recipe:
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {shown_value(self.seeds)} names a seed twice")
        return self

    @property
    def normalization(self) -> str | NormalizeStats:
        """data.normalize with `auto` resolved: what the data is normalized with."""
        chosen = self.data.normalize
        if chosen != "auto":
            return chosen
        if self.teacher.model.startswith(("torchvision:", "timm:")):
            return "imagenet"
        return "train" if self.data.dataset == "imagefolder" else "dataset"

    @model_validator(mode="after")
    def _check_output_dir(self) -> Recipe:
        """The run folder must be creatable: no file where output_dir, one of its parents or the run folder is."""
        for path in (self.run_dir, *self.run_dir.parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(
                        f"output_dir: '{path}' is a file; allowed: a folder (created when missing)"
                    )
                break
        return self

    @model_validator(mode="after")
    def _check_stage_changes(self) -> Recipe:
        """Methods named in distill.stages/artifacts are trained by this recipe, and every stage's changed
        training section is valid (the stage names are checked against the plans when the run is prepared)."""
        trained = [self.distill.method, *self.distill.baselines]
        for section in ("stages", "artifacts"):
            for method in getattr(self.distill, section):
                if method not in trained:
                    raise ValueError(
                        f"distill.{section}.{method}: '{method}' is not trained by this recipe "
                        f"(allowed: {', '.join(trained)})"
                    )
        for method, stages in self.distill.stages.items():
            for stage, changes in stages.items():
                try:
                    stage_train_config(self.train, changes)
                except ValueError as exc:
                    raise ValueError(f"distill.stages.{method}.{stage}.{exc}") from None
        return self

    @model_validator(mode="after")
    def _check_export_models(self) -> Recipe:
        chosen = self.export.models
        if isinstance(chosen, str):
            return self
        trained = [self.distill.method, *self.distill.baselines]
        for index, name in enumerate(chosen):
            if name not in trained:
                raise ValueError(
                    f"export.models.{index}: '{name}' is not trained by this recipe (allowed: {', '.join(trained)})"
                )
        if not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"export.models: {shown_value(chosen)} must name each method once, at least one "
                "(or give best_val, main or all)"
            )
        return self

    @model_validator(mode="after")
    def _check_reference(self) -> Recipe:
        reference = self.report.reference
        trained = [self.distill.method, *self.distill.baselines]
        if reference is not None and reference not in trained:
            raise ValueError(
                f"report.reference: '{reference}' is not trained by this recipe (allowed: {', '.join(trained)})"
            )
        return self
