"""Stage artifacts, per-stage training sections, the run folder's layout and metrics.json's typed records,
on real (tiny) builds of the digits data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekd.config.train import TrainConfig, stage_train_config
from edgekd.layout import RunLayout
from edgekd.records import RunMetrics

REFILLED = {"method": "refilled", "baselines": [], "refilled": {"embedding_epochs": 1}}
TRAIN = {"epochs": 3, "optimizer": {"lr": 0.1}}
NO_EXPORT = {"enabled": False}


def build(cli, write_recipe, name: str, **sections) -> RunMetrics:
    path = write_recipe(name, benchmark=NO_EXPORT, **sections)
    result = cli("build", path, "--quiet")
    assert result.exit_code == 0, result.output
    return RunMetrics.load(RunLayout(Path(yaml_output_dir(path)) / name).metrics)


def yaml_output_dir(path: Path) -> str:
    import yaml

    return yaml.safe_load(path.read_text())["output_dir"]


@pytest.fixture(scope="module")
def refilled_run(tmp_path_factory):
    """One tiny REFILLED build whose embedding artifact other tests load."""
    import yaml
    from click.testing import CliRunner
    from conftest import TINY_RECIPE

    from edgekd.cli import main

    root = tmp_path_factory.mktemp("producer")
    recipe = {**yaml.safe_load(yaml.safe_dump(TINY_RECIPE)), "name": "producer", "output_dir": str(root)}
    recipe.update(distill=REFILLED, train=TRAIN, benchmark=NO_EXPORT)
    path = root / "producer.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    layout = RunLayout(root / "producer")
    return layout, RunMetrics.load(layout.metrics)


@pytest.mark.slow
def test_a_stage_artifact_is_saved_recorded_and_handed_to_the_next_stage(refilled_run):
    layout, metrics = refilled_run
    embedding, classifier = metrics.main.stages
    assert [a.name for a in embedding.produces] == ["embedding"]
    produced = embedding.produces[0]
    path = layout.method("refilled").stage("embedding").artifact("embedding.pt")
    assert produced.path == str(path) and path.is_file() and produced.origin == "produced"
    assert [(a.name, a.sha256, a.origin) for a in classifier.consumes] == [
        ("embedding", produced.sha256, "produced")
    ]
    # it is the student's weights as the embedding stage selected them (read back weights_only)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(torch.load(metrics.main.checkpoint, weights_only=True))


@pytest.mark.slow
def test_loading_an_artifact_from_another_run_skips_its_stage_and_ends_identically(
    refilled_run, cli, write_recipe
):
    layout, producer = refilled_run
    artifact = layout.method("refilled").stage("embedding").artifact("embedding.pt")
    consumer = build(
        cli,
        write_recipe,
        "consumer",
        distill={**REFILLED, "artifacts": {"refilled": {"embedding": str(artifact)}}},
        train=TRAIN,
    )
    embedding, classifier = consumer.main.stages
    assert embedding.skipped is not None and "loaded" in embedding.skipped and embedding.epochs == 0
    assert classifier.consumes[0].origin == "loaded" and classifier.consumes[0].path == str(artifact)
    # the classifier stage started from the same embedding with the same seeds: the same student
    assert consumer.main.test_acc == producer.main.test_acc
    assert consumer.main.stages[1].best_epoch == producer.main.stages[1].best_epoch
    assert (
        not RunLayout(Path(consumer.main.checkpoint).parents[1])
        .method("refilled")
        .stage("embedding")
        .last.exists()
    )


@pytest.mark.parametrize(
    ("artifacts", "words"),
    [
        (
            {"refilled": {"centres": "x.pt"}},
            ["distill.artifacts.refilled.centres", "produces no artifact", "embedding"],
        ),
        (
            {"refilled": {"embedding": "missing_{seed}.pt"}},
            ["distill.artifacts.refilled.embedding", "missing_0.pt", "does not exist"],
        ),
        ({"kd": {"embedding": "x.pt"}}, ["distill.artifacts.kd", "not trained by this recipe"]),
    ],
)
def test_a_bad_artifact_source_is_one_line_exit_2_before_anything_is_written(
    cli, write_recipe, tmp_path, artifacts, words
):
    result = cli("build", write_recipe(distill={**REFILLED, "artifacts": artifacts}, train=TRAIN))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and all(word in result.output for word in words), result.output
    assert not (tmp_path / "runs").exists()


def test_an_artifact_that_does_not_fit_the_student_is_refused_before_anything_is_written(
    cli, write_recipe, tmp_path
):
    from edgekd.models import create_model

    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), wrong)
    distill = {**REFILLED, "artifacts": {"refilled": {"embedding": str(wrong)}}}
    result = cli("build", write_recipe(distill=distill, train=TRAIN))
    assert result.exit_code == 2
    assert "distill.artifacts.refilled.embedding" in result.output and "does not fit" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_stage_changes_only_the_training_fields_it_names():
    base = TrainConfig(epochs=10, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    changed = stage_train_config(base, {"optimizer": {"lr": 0.01}, "schedule": {"name": "constant"}})
    assert changed.optimizer.lr == 0.01 and changed.optimizer.momentum == 0.9 and changed.epochs == 10
    assert changed.schedule.name == "constant" and stage_train_config(base, None) is base
    # another kind of optimizer or schedule starts from its own defaults, not the recipe's other kind's
    milestones = TrainConfig(epochs=10, schedule={"name": "multistep", "milestones": [5]})
    adam = stage_train_config(
        milestones, {"optimizer": {"name": "adam", "lr": 0.01}, "schedule": {"name": "constant"}}
    )
    assert adam.optimizer.nesterov is False and adam.optimizer.weight_decay == 5e-4
    assert adam.schedule.name == "constant" and adam.schedule.milestones == []
    assert stage_train_config(milestones, {"schedule": {"gamma": 0.5}}).schedule.milestones == [5]
    with pytest.raises(ValueError, match="select: a stage cannot change it"):
        stage_train_config(base, {"select": "last"})
    with pytest.raises(ValueError, match=r"optimizer\.lr"):
        stage_train_config(base, {"optimizer": {"lr": -1}})


@pytest.mark.slow
def test_distill_stages_gives_one_stage_its_own_training_section(cli, write_recipe):
    distill = {
        "method": "fitnet",
        "baselines": [],
        "fitnet": {"hint_epochs": 1},
        "stages": {"fitnet": {"hint": {"epochs": 2, "optimizer": {"lr": 0.02}}}},
    }
    metrics = build(cli, write_recipe, "staged", distill=distill, train=TRAIN)
    hint, task = metrics.main.stages
    assert (hint.stage, hint.epochs, task.epochs) == ("hint", 2, 2)
    run_dir = Path(metrics.main.checkpoint).parents[1]
    history = json.loads(RunLayout(run_dir).history.read_text())["fitnet"]
    hint_rows = [row for row in history if row["stage"] == "hint"]
    task_rows = [row for row in history if row["stage"] == "task"]
    assert hint_rows[0]["lr"] == pytest.approx(0.02) and task_rows[0]["lr"] == pytest.approx(0.1)


def test_a_stage_name_the_plan_lacks_is_refused(cli, write_recipe, tmp_path):
    distill = {**REFILLED, "stages": {"refilled": {"warmup": {"epochs": 1}}}}
    result = cli("build", write_recipe(distill=distill, train=TRAIN))
    assert result.exit_code == 2
    assert "distill.stages.refilled.warmup" in result.output and "embedding, classifier" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_run_folder_matches_its_layout_and_metrics_read_back_typed(refilled_run):
    layout, metrics = refilled_run
    for path in (
        layout.recipe,
        layout.layout,
        layout.metrics,
        layout.history,
        layout.history_csv,
        layout.bench_csv,
        layout.report_md,
        layout.report_html,
        layout.model_weights("teacher"),
        layout.model_weights("refilled"),
        layout.method("refilled").images,
    ):
        assert path.is_file(), path
    stage = layout.method("refilled").stage("classifier")
    assert stage.best.is_file() and stage.last.is_file() and stage.done.is_file() and stage.history.is_file()
    # one serialisation: what was written reads back to the same records
    assert RunMetrics.model_validate(json.loads(layout.metrics.read_text())) == metrics
    # per stage: what it read, and the per-stage plot in the report
    assert (
        metrics.main.stages[0].data.labelled_selection > 0 and metrics.main.stages[1].data.labelled_train > 0
    )
    report = layout.report_md.read_text()
    assert "### Stages" in report and "→ embedding" in report and "![stages.png](stages.png)" in report
    assert layout.plot("stages.png").is_file()


def test_metrics_of_another_version_are_refused_naming_the_key(tmp_path):
    from edgekd.errors import EdgekdError

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"run": {}}))
    with pytest.raises(EdgekdError, match=r"not a metrics\.json of this edgekd version"):
        RunMetrics.load(path)


def test_a_holdout_view_splits_the_training_images_per_class_and_never_reads_val_or_test():
    from edgekd.config.data import DataConfig
    from edgekd.data import build_data

    data = build_data(DataConfig(per_class=10), subset=True, seed=0)
    view = data.holdout(0.8, seed=3)
    train_idx, held_idx = view.train.indices, view.val.indices
    assert set(train_idx).isdisjoint(held_idx) and set(train_idx) | set(held_idx) == set(data.train.indices)
    for label in range(data.num_classes):  # 8 of each class's 10 train, 2 score selection
        assert (view.train.labels == label).sum() == 8 and (view.val.labels == label).sum() == 2
    assert view.train.augment is data.train.augment and view.val.augment is None
    assert view.test is data.test and set(held_idx).isdisjoint(data.val.indices)
    again, other = data.holdout(0.8, seed=3), data.holdout(0.8, seed=4)
    assert list(again.val.indices) == list(held_idx) and list(other.val.indices) != list(held_idx)


def test_a_stage_on_the_holdout_view_trains_and_selects_on_it(tmp_path):
    from edgekd.config.data import DataConfig
    from edgekd.data import build_data
    from edgekd.distill import DistillContext, get_method
    from edgekd.distill.plan import Stage
    from edgekd.layout import MethodFolder
    from edgekd.models import create_model
    from edgekd.train.stages import StageInputs, run_plan

    data = build_data(DataConfig(per_class=10), subset=True, seed=0)
    scratch = get_method("scratch")
    stage = Stage("search", scratch.distiller, "CE on the held-in images", "best_val", 1, view="holdout")
    torch.manual_seed(0)
    result = run_plan(
        [stage],
        create_model("resnet8", 10, 1, width=4),
        None,
        scratch.options(),
        DistillContext(10, tuple(range(10))),
        StageInputs(data, TrainConfig(epochs=1)),
        seed=0,
        folder=MethodFolder(tmp_path / "scratch"),
        device=torch.device("cpu"),
        label="scratch",
        resume=False,
    )
    used = result.records[0].data
    # it read the 100 training images only, 20 of them held out for its own selection: no validation images
    assert (used.labelled_train, used.held_out, used.labelled_selection) == (100, 20, 0)


def test_validate_prints_how_each_method_spends_its_epochs(cli, write_recipe):
    """The plan's split of train.epochs, distill.stages' changes and a check's extra epochs, per method."""
    path = write_recipe(
        train={"epochs": 30, "optimizer": {"lr": 0.1}},
        distill={
            "method": "fitnet",
            "baselines": ["kd"],
            "fitnet": {"hint_epochs": 10},
            "stages": {"kd": {"train": {"epochs": 7}}},
        },
    )
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "epochs per method (train.epochs: 30, per seed):" in result.output
    assert "fitnet       hint 10 -> task 20 (30 epochs)" in result.output
    assert "kd           train 7 (7 epochs)" in result.output
