"""The run folder's layout: every file name of a run, declared once and read by everything that writes or
reads a run folder (the pipeline, the trainer, the report, `edgekd export/bench` on a run folder).

```
runs/<name>/
  .edgekd-run (the marker)  recipe.yaml  layout.json  metrics.json  history.json  history.csv  bench.csv
  report.md  report.html  *.png  DEPLOY.md
  models/<method>[_seed<k>].pt, teacher.pt     the selected weights of every trained model
  artifacts/                                   the shipped students' deployables (ONNX, OpenVINO IR, ...)
  train/teacher/                               the teacher's training state (when the run trains it)
  train/<method>[/seed<k>]/images.json         the pool indices a student trained and was selected on
  train/<method>[/seed<k>]/<stage>/            one folder per stage: last.pt best.pt history.json fit.json
  train/<method>[/seed<k>]/<stage>/artifacts/  the named artifacts the stage produced
runs/<name>-tune-<method>/                     `edgekd tune`: tune.json, variants/<label>/<method>_seed<k>/
```
The lock file sits beside the run folder (`<output_dir>/.<name>.lock`), not in it, so `--force` can remove
the folder while holding the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Version 2: every method's stages in train/<method>[/seed<k>]/<stage>/ (version 1: train/<method>/last.pt).
LAYOUT_VERSION = 2


@dataclass(frozen=True)
class StageFolder:
    """What one training run (a stage of a method, or the teacher) keeps to resume and to skip when done."""

    path: Path

    @property
    def last(self) -> Path:
        """The state after the last completed epoch: resume continues from it."""
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        """The selected epoch's state (the whole objective: student, connectors, heads)."""
        return self.path / "best.pt"

    @property
    def history(self) -> Path:
        return self.path / "history.json"

    @property
    def done(self) -> Path:
        """Written when the stage finished: a resumed run loads its result instead of training it again."""
        return self.path / "fit.json"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    def artifact(self, file_name: str) -> Path:
        return self.artifacts / file_name


@dataclass(frozen=True)
class MethodFolder:
    """One method's training for one seed: its stages and the images it used."""

    path: Path

    @property
    def images(self) -> Path:
        """Per trained student: the pool indices of the images it trained and was selected on, for audits."""
        return self.path / "images.json"

    def stage(self, name: str) -> StageFolder:
        return StageFolder(self.path / name)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    # Written first into every run folder edgekd creates: --force deletes only a folder that carries it.
    MARKER = ".edgekd-run"

    @property
    def marker(self) -> Path:
        return self.root / self.MARKER

    @property
    def lock(self) -> Path:
        return self.root.parent / f".{self.root.name}.lock"

    @property
    def recipe(self) -> Path:
        """The resolved recipe (every default filled in) that started the run: --resume compares with it."""
        return self.root / "recipe.yaml"

    @property
    def layout(self) -> Path:
        return self.root / "layout.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def bench_csv(self) -> Path:
        return self.root / "bench.csv"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def deploy_md(self) -> Path:
        """Per artifact: its preprocessing, an inference snippet and the runtime's benchmark command."""
        return self.root / "DEPLOY.md"

    @property
    def report_html(self) -> Path:
        """The same report as a self-contained web page (plots embedded), verdicts at the top."""
        return self.root / "report.html"

    def plot(self, file_name: str) -> Path:
        return self.root / file_name

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_weights(self, name: str, seed: int | None = None) -> Path:
        """`models/<name>.pt`, or `models/<name>_seed<k>.pt` when the run trains several seeds."""
        return self.models / (f"{name}.pt" if seed is None else f"{name}_seed{seed}.pt")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def teacher_training(self) -> StageFolder:
        return StageFolder(self.train / "teacher")

    def method(self, name: str, seed: int | None = None) -> MethodFolder:
        """`train/<method>/`, or `train/<method>/seed<k>/` when the run trains several seeds."""
        path = self.train / name
        return MethodFolder(path if seed is None else path / f"seed{seed}")

    @property
    def tune_result(self) -> Path:
        """`edgekd tune`'s result (its own run folder per tuned method, `<name>-tune-<method>`)."""
        return self.root / "tune.json"

    def tune_variant(self, label: str, method: str, seed: int) -> MethodFolder:
        """One grid point's training of `method` for one seed in `edgekd tune`'s run folder."""
        return MethodFolder(self.root / "variants" / label / f"{method}_seed{seed}")
