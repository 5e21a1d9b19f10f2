"""Recipe loading and validation: every bad field is one readable error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgekd.config.loading import apply_override, load_recipe, recipe_json_schema, validate_recipe
from edgekd.config.units import parse_count
from edgekd.errors import RecipeError

BASE = {
    "name": "t",
    "teacher": {"model": "resnet20", "train": {"epochs": 1}},
    "student": {"family": "resnet", "budget": {"params": "30k"}},
}


def with_changes(**sections):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return raw


def error_of(raw) -> str:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return str(info.value)


def test_defaults_fill_every_section():
    recipe = validate_recipe(BASE)
    assert recipe.data.dataset == "digits"
    assert recipe.student.budget.params == 30_000
    assert recipe.distill.method == "kd" and recipe.distill.kd.temperature == 4.0
    assert recipe.run_dir.as_posix() == "runs/t"


@pytest.mark.parametrize(
    ("text", "count"), [("200k", 200_000), ("1.5M", 1_500_000), (" 12 ", 12), (3000, 3000)]
)
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_unknown_key_names_field_and_allowed_keys():
    message = error_of(with_changes(data={"batch_sise": 3}))
    assert message.startswith("data.batch_sise: unknown field")
    assert "batch_size" in message


@pytest.mark.parametrize(
    ("distill", "expected"),
    [
        # a stage's training changes are described against the training section, not the whole recipe
        (
            {"method": "fitnet", "stages": {"fitnet": {"hint": {"optimizer": {"lrr": 0.1}}}}},
            "distill.stages.fitnet.hint.optimizer.lrr: unknown field (did you mean 'lr'? allowed here: lr, "
            "momentum, name, nesterov, weight_decay)",
        ),
        (
            {"method": "fitnet", "stages": {"fitnet": {"hint": {"schedul": {"name": "constant"}}}}},
            "distill.stages.fitnet.hint.schedul: a stage cannot change it (did you mean 'schedule'? allowed: "
            "epochs, optimizer, schedule, grad_clip)",
        ),
        (
            {"method": "fitnet", "stages": {"fitnet": {"hint": {"schedule": {"warmup_epoch": 2}}}}},
            "distill.stages.fitnet.hint.schedule.warmup_epoch: unknown field (did you mean 'warmup_epochs'?",
        ),
        # a variant's options are described against its method's options block
        (
            {"method": "v1", "variants": {"v1": {"method": "finetune", "options": {"hed": "fresh"}}}},
            "distill.variants.v1.options.hed: unknown field (did you mean 'head'? allowed here: head, "
            "lr_factor, trainable)",
        ),
        (
            {"method": "v1", "variants": {"v1": {"method": "kd", "options": {"temprature": 2.0}}}},
            "distill.variants.v1.options.temprature: unknown field (did you mean 'temperature'?",
        ),
    ],
)
def test_nested_errors_suggest_the_fields_of_their_own_block(distill, expected):
    assert error_of(with_changes(distill=distill)).startswith(expected)


def test_unknown_top_level_section():
    assert error_of(with_changes(trian={"epochs": 3})).startswith("trian: unknown field")


def test_wrong_type_names_field_and_value():
    message = error_of(with_changes(train={"epochs": "ten"}))
    assert message.startswith("train.epochs:") and "'ten'" in message and "integer" in message


def test_missing_data_root(tmp_path):
    message = error_of(with_changes(data={"dataset": "cifar100", "root": str(tmp_path / "nowhere")}))
    assert message.startswith("data.root:") and "nowhere" in message and "download" in message
    assert error_of(with_changes(data={"dataset": "mnist"})).startswith("data.root:")


def test_class_id_out_of_range():
    message = error_of(with_changes(data={"classes": [1, 12]}))
    assert message.startswith("data.classes:") and "12" in message and "0..9" in message


def test_repeated_class_id():
    assert error_of(with_changes(data={"classes": [3, 3]})).startswith("data.classes:")


def test_unlabeled_images_need_a_few_shot_or_subset_run():
    message = error_of(with_changes(data={"classes": [1, 2], "unlabeled": "subset"}))
    assert message.startswith("data.unlabeled:") and "per_class" in message
    message = error_of(with_changes(data={"unlabeled": "all"}))
    assert message.startswith("data.unlabeled:") and "'none'" in message
    assert error_of(with_changes(data={"unlabeled": "some"})).startswith("data.unlabeled:")


def test_unknown_method_lists_available():
    message = error_of(with_changes(distill={"method": "kdd"}))
    assert message.startswith("distill.method:") and "scratch" in message and "kd" in message


def test_method_options_are_checked():
    assert error_of(with_changes(distill={"kd": {"alpha": 1.5}})).startswith("distill.kd.alpha:")


def test_teacher_needs_one_source(tmp_path):
    assert error_of({**BASE, "teacher": {"model": "resnet20"}}).startswith("teacher:")
    message = error_of({**BASE, "teacher": {"model": "resnet20", "checkpoint": str(tmp_path / "t.pt")}})
    assert message.startswith("teacher.checkpoint:") and "t.pt" in message


def test_family_needs_budget():
    assert error_of({**BASE, "student": {"family": "wrn"}}).startswith("student.budget:")
    assert error_of({**BASE, "student": {"family": "wrn", "model": "resnet8"}}).startswith("student:")


def test_milestones_inside_epochs():
    raw = with_changes(train={"epochs": 10, "schedule": {"name": "multistep", "milestones": [5, 12]}})
    assert error_of(raw).startswith("train.schedule.milestones:")


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(path, ["train.epochs=3", "data.classes=[1, 2]", "distill.kd.alpha=0.5", "seed=7"])
    assert recipe.train.epochs == 3 and recipe.data.classes == [1, 2]
    assert recipe.distill.kd.alpha == 0.5 and recipe.seed == 7


def test_override_errors():
    with pytest.raises(RecipeError, match="--set"):
        apply_override({}, "no-equals-sign")
    with pytest.raises(RecipeError, match="name"):
        apply_override({"name": "x"}, "name.inner=3")


def test_yaml_object_tags_are_rejected(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(path)


def test_schema_lists_method_options():
    schema = recipe_json_schema()
    distill = schema["$defs"]["DistillConfig"]["properties"]
    assert {"method", "baselines", "kd", "scratch", "finetune"} <= set(distill)


def test_shipped_recipes_are_valid(tmp_path):
    """Every recipe in recipes/ passes the schema (a data set on disk is pointed at an empty folder here, a
    teacher checkpoint the user brings at an empty file)."""
    import yaml

    paths = sorted(Path("recipes").glob("*.yaml"))
    assert len(paths) >= 6
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.touch()
    for path in paths:
        raw = yaml.safe_load(path.read_text())
        overrides = [f"data.root={tmp_path}"] if "root" in (raw.get("data") or {}) else []
        if "checkpoint" in (raw.get("teacher") or {}):
            overrides.append(f"teacher.checkpoint={checkpoint}")
        load_recipe(path, overrides)


def test_multistep_factors_give_the_lr_after_each_milestone():
    from edgekd.config.train import ScheduleConfig
    from edgekd.train.optim import lr_multiplier

    cfg = ScheduleConfig(name="multistep", milestones=[100, 150, 175], factors=[0.1, 0.01, 0.002])
    assert [lr_multiplier(e, 200, cfg) for e in (0, 99, 100, 149, 150, 175, 199)] == [
        1.0,
        1.0,
        0.1,
        0.1,
        0.01,
        0.002,
        0.002,
    ]
    raw = with_changes(
        train={"epochs": 200, "schedule": {"name": "multistep", "milestones": [100], "factors": [0.1, 0.2]}}
    )
    assert error_of(raw).startswith("train.schedule.factors:")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "RUN", "--format", "tflite"], "'tflite' is not one of 'onnx', 'openvino', 'tensorrt'"),
        (["bench", "model.onnx", "--backend", "coreml"], "'coreml' is not one of"),
        (["bench"], "missing argument 'artifact'"),
        (["validate", "RECIPE", "--bogus"], "no such option '--bogus'"),
        (["deploy"], "no such command 'deploy'"),
    ],
)
def test_command_line_mistakes_are_one_line_exit_2(cli, write_recipe, args, needle):
    recipe = write_recipe()
    mapping = {"RUN": str(recipe.parent), "RECIPE": str(recipe)}
    result = cli(*[mapping.get(arg, arg) for arg in args])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0, result.output
    assert needle in result.output.lower()
