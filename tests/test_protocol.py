"""The evaluation protocol: customer split, per-seed draws, per-class validation, even batches, paired
statistics, baselines as the papers define them, and tuning on validation only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import edgekd.distill.methods  # noqa: F401  (registers every method)
from edgekd.config.data import DataConfig
from edgekd.data import DataPlan, build_data
from edgekd.data.batches import EvenBatchSampler, even_batch_sizes, smallest_batch
from edgekd.distill import DistillContext, get_method
from edgekd.distill.registry import distill_section_model, resolve_method
from edgekd.errors import EdgekdError
from edgekd.models import create_model
from edgekd.report.stats import (
    correct_verdicts,
    difference_cell,
    holm_adjusted,
    mean_interval,
    paired_difference,
)

SUBSET = [1, 3, 5, 7, 9]
CUSTOMER = dict(classes=SUBSET, per_class=10, student_pool="customer", val_per_class=5, unlabeled="subset")


@pytest.fixture(scope="module")
def plan() -> DataPlan:
    return DataPlan(DataConfig(**CUSTOMER, batch_size=16))


# ------------------------------------------------------------------------------------------ customer split
def test_customer_images_are_disjoint_from_the_teachers_training_val_and_test(plan):
    teacher = plan.teacher()
    student = plan.student(0)
    seen_by_teacher = set(teacher.train.indices)
    for part in (student.train, student.val, student.unlabeled.view):
        assert not set(part.indices) & seen_by_teacher
        assert not set(part.indices) & set(plan.split.val)  # train/val/unlabelled index the training pool
    assert set(student.test.indices) <= set(teacher.test.indices)
    # train, val and unlabelled are disjoint from each other and together are the customer's 5 digits
    parts = [set(student.train.indices), set(student.val.indices), set(student.unlabeled.view.indices)]
    assert sum(map(len, parts)) == len(set().union(*parts))
    labels = plan.source.train_pool.labels
    customer_subset = set(plan.customer[np.isin(labels[plan.customer], SUBSET)])
    assert set().union(*parts) == customer_subset
    # the teacher keeps the other half of every class, and the two halves make the training split
    assert sorted(seen_by_teacher | set(plan.customer)) == sorted(plan.split.train)
    counts = np.bincount(labels[plan.customer], minlength=10)
    assert all(
        abs(c - n / 2) <= 1 for c, n in zip(counts, np.bincount(labels[plan.split.train]), strict=True)
    )
    assert student.summary()["teacher_trained_on_student_images"] is False


def test_teacher_train_protocol_keeps_the_papers_setting():
    paper = DataPlan(DataConfig(classes=SUBSET, per_class=10, unlabeled="subset"))
    teacher, student = paper.teacher(), paper.student(0)
    assert paper.customer is None
    assert set(student.train.indices) <= set(teacher.train.indices)
    assert set(student.unlabeled.view.indices) <= set(teacher.train.indices)
    assert student.summary()["teacher_trained_on_student_images"] is True


# ------------------------------------------------------------------------------------------ draws
def test_few_shot_draws_differ_across_seeds_and_repeat_within_one(plan):
    draws = {seed: plan.student(seed) for seed in (0, 1, 2)}
    trains = {seed: tuple(view.train.indices) for seed, view in draws.items()}
    assert len(set(trains.values())) == 3
    assert tuple(DataPlan(plan.cfg).student(1).train.indices) == trains[1]
    for view in draws.values():
        np.testing.assert_array_equal(np.bincount(view.train.labels, minlength=5), [10] * 5)
    fixed = DataPlan(DataConfig(**CUSTOMER, draws="fixed"))
    assert tuple(fixed.student(0).train.indices) == tuple(fixed.student(7).train.indices)


def test_a_smaller_draw_is_part_of_a_larger_one_and_ignores_the_val_size():
    small = DataPlan(DataConfig(**{**CUSTOMER, "per_class": 5, "val_per_class": 3})).student(4)
    large = DataPlan(DataConfig(**{**CUSTOMER, "per_class": 10, "val_per_class": 8})).student(4)
    assert set(small.train.indices) <= set(large.train.indices)


def test_val_per_class_sizes_the_selection_split():
    customer = DataPlan(DataConfig(**CUSTOMER)).student(0)
    np.testing.assert_array_equal(np.bincount(customer.val.labels, minlength=5), [5] * 5)
    assert customer.summary()["val_source"] == "customer pool"
    paper = build_data(DataConfig(classes=SUBSET, per_class=10, val_per_class=3), seed=2)
    np.testing.assert_array_equal(np.bincount(paper.val.labels, minlength=5), [3] * 5)
    whole_val = build_data(DataConfig(classes=SUBSET, per_class=10))
    assert set(paper.val.indices) < set(whole_val.val.indices)
    with pytest.raises(EdgekdError, match=r"^data\.val_per_class: 99 is more than the validation split"):
        build_data(DataConfig(classes=SUBSET, val_per_class=99))
    with pytest.raises(EdgekdError, match=r"^data\.per_class: per_class 50 \+ val_per_class 20 is more"):
        build_data(DataConfig(**{**CUSTOMER, "per_class": 50, "val_per_class": 20}))


# ------------------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("count", [1, 15, 16, 17, 31, 50, 63, 1222])
def test_even_batches_keep_every_image_and_none_is_degenerate(count):
    batch_size = 16
    sizes = even_batch_sizes(count, batch_size)
    assert sum(sizes) == count and len(sizes) == math.ceil(count / batch_size)
    assert max(sizes) <= batch_size and min(sizes) >= min(count, batch_size // 2)
    assert smallest_batch(count, batch_size, "even") == min(sizes)
    batches = list(EvenBatchSampler(count, batch_size, torch.Generator().manual_seed(0)))
    assert sorted(i for batch in batches for i in batch) == list(range(count))


def test_training_loader_has_no_batch_under_the_stated_minimum(plan):
    student = plan.student(0)  # 50 images in batches of 16: a plain loader ends on a batch of 2
    stated = student.summary()["smallest_train_batch"]
    assert stated >= 8
    sizes = [len(labels) for _, labels in student.train_loader(seed=3)]
    assert min(sizes) >= stated and sum(sizes) == 50 and len(sizes) == student.steps_per_epoch
    keep = build_data(DataConfig(**CUSTOMER, batch_size=16, last_batch="keep"))
    assert [len(labels) for _, labels in keep.train_loader(seed=3)][-1] == 2
    drop = build_data(DataConfig(**CUSTOMER, batch_size=16, last_batch="drop"))
    assert {len(labels) for _, labels in drop.train_loader(seed=3)} == {16}


# ------------------------------------------------------------------------------------------ statistics
def test_t_interval_matches_a_hand_computed_example():
    differences = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sample std sqrt(5/3), n 4, t(0.975, 3) = 3.182446
    half_width = 3.182446305284263 * math.sqrt(5 / 3) / 2
    low, high = mean_interval(differences, confidence=0.95, method="t")
    assert low == pytest.approx(2.5 - half_width, abs=1e-9) and high == pytest.approx(
        2.5 + half_width, abs=1e-9
    )
    assert mean_interval([1.0]) is None


def test_the_same_difference_on_every_seed_gives_no_interval_and_no_verdict():
    # zero observed spread over 3 seeds: the t interval is undefined, and no verdict may come from it
    assert mean_interval([0.5, 0.5, 0.5]) is None
    assert mean_interval([0.5, 0.5, 0.5], method="bootstrap") is None
    paired = paired_difference({0: 95.5, 1: 96.5, 2: 97.5}, {0: 95.0, 1: 96.0, 2: 97.0}, reference_name="kd")
    assert paired["interval"] is None and not paired["excludes_zero"] and paired["p_value"] is None
    assert paired["verdict"] == "same difference on all 3 seeds: no interval"
    assert difference_cell(paired) == "+0.50"


def test_holm_adjusts_step_down_and_only_takes_verdicts_away():
    assert holm_adjusted([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None], abs=1e-12)
    reference = {0: 90.0, 1: 91.0, 2: 92.0, 3: 90.5}
    clear = paired_difference({0: 95.0, 1: 96.2, 2: 96.9, 3: 95.4}, reference, reference_name="kd")
    marginal = paired_difference({0: 91.0, 1: 91.6, 2: 93.4, 3: 90.9}, reference, reference_name="kd")
    assert clear["verdict"] == marginal["verdict"] == "better"
    # the t-test's p-value and the interval agree: p < 0.05 exactly when the 95 % interval excludes zero
    assert clear["p_value"] < 0.05 and 0.025 < marginal["p_value"] < 0.05
    # the same differences, another seed order: the same p-value
    again = paired_difference({0: 90.4, 1: 92.4, 2: 93.0, 3: 91.1}, reference, reference_name="kd")
    assert again["p_value"] == pytest.approx(marginal["p_value"])
    alone = [dict(clear), dict(marginal), dict(again)]
    correct_verdicts(alone, "none")
    assert [c["verdict"] for c in alone] == ["better"] * 3 and alone[0]["comparisons"] == 3
    correct_verdicts(comparisons := [clear, marginal, again], "holm")
    assert comparisons[0]["verdict"] == "better"  # 3 x its tiny p-value
    # the next step multiplies by 2 and fails (> 0.05); the step-down stops, the last one fails with it
    for comparison in comparisons[1:]:
        assert comparison["verdict"] == "no difference shown after Holm's correction"
        assert comparison["adjusted_p_value"] == pytest.approx(2 * marginal["p_value"])


def test_bootstrap_interval_is_a_percentile_interval_of_resampled_means():
    differences = [1.0, 2.0, 3.0, 4.0]
    low, high = mean_interval(differences, method="bootstrap")
    # Every resampled mean lies in [1, 4]; the 2.5 % and 97.5 % percentiles of a 4-value bootstrap are near
    # 1.5 and 3.5 (the exact distribution of the mean of 4 draws with replacement).
    assert 1.0 <= low <= 1.75 and 3.25 <= high <= 4.0
    assert mean_interval(differences, method="bootstrap") == (low, high)  # fixed RNG: repeatable


def test_paired_difference_pairs_by_seed_and_gives_a_verdict():
    method = {0: 96.0, 1: 95.0, 2: 97.0, 3: 96.5}
    scratch = {0: 94.0, 1: 94.0, 2: 94.5, 3: 94.0}
    paired = paired_difference(method, scratch, reference_name="scratch")
    assert paired["differences"] == [2.0, 1.0, 2.5, 2.5] and paired["mean"] == 2.0
    assert paired["excludes_zero"] and paired["verdict"] == "better" and paired["interval"][0] > 0
    tie = paired_difference({0: 95.0, 1: 94.0}, {0: 94.0, 1: 95.0}, reference_name="scratch")
    assert tie["verdict"] == "no difference shown" and not tie["excludes_zero"]
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference({0: 1.0}, {1: 1.0}, reference_name="scratch")


# ------------------------------------------------------------------------------------------ baselines
def make_finetune(**options):
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10, 1, width=8).eval()
    student = create_model("resnet8", 10, 1, width=8)
    student.load_state_dict(teacher.state_dict())
    entry = get_method("finetune")
    context = DistillContext(len(SUBSET), tuple(SUBSET), input_shape=(1, 8, 8))
    return teacher, entry.distiller(student, teacher, entry.options(**options), context)


def test_finetune_restricted_head_is_the_teachers_rows_of_the_students_classes():
    teacher, distiller = make_finetune(head="restricted", trainable="all")
    head = distiller.student.classifier
    assert head.out_features == 5
    assert torch.equal(head.weight, teacher.classifier.weight[SUBSET])
    assert torch.equal(head.bias, teacher.classifier.bias[SUBSET])
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(distiller.student.eval()(images), teacher(images)[:, SUBSET])
    assert all(p.requires_grad for p in distiller.student.parameters())


def test_finetune_fresh_head_and_last_stage_train_only_the_last_stage():
    teacher, distiller = make_finetune()  # defaults: fresh head, last stage
    student = distiller.student
    assert student.classifier.out_features == 5
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight[SUBSET])
    trained = {name for name, p in student.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith(("layer3.", "classifier.")) for name in trained)
    assert any(name.startswith("layer3.") for name in trained)
    distiller.train()
    assert not student.layer1[0].bn1.training and student.layer3[0].bn1.training  # frozen BN keeps its stats
    _, head_only = make_finetune(trainable="head")
    assert {n for n, p in head_only.student.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }


def test_fitnet_variants_are_romero_and_repdistiller():
    from edgekd.distill.methods.fitnet import hint_stage_epochs, resolved_option

    fitnet = get_method("fitnet").options
    romero = fitnet()
    assert hint_stage_epochs(romero, 240) == 30 and resolved_option(romero, "kd_alpha") == 0.9
    assert resolved_option(romero, "task_hint_weight") == 0.0
    rep = fitnet(variant="repdistiller")
    assert hint_stage_epochs(rep, 240) == 0 and resolved_option(rep, "task_hint_weight") == 100.0
    assert resolved_option(rep, "kd_alpha") == 0.0
    assert resolved_option(fitnet(variant="repdistiller", kd_alpha=0.3), "kd_alpha") == 0.3


# ------------------------------------------------------------------------------------------ variants
def test_method_variants_run_a_registered_method_with_other_options():
    section = distill_section_model()(
        method="skd",
        baselines=["finetune", "ft_restricted"],
        finetune={"lr_factor": 0.5},
        variants={"ft_restricted": {"method": "finetune", "options": {"head": "restricted"}}},
    )
    resolved = resolve_method(section, "ft_restricted")
    assert resolved.entry.name == "finetune" and resolved.options.head == "restricted"
    assert resolved.options.lr_factor == 0.5  # the method's own block fills what the variant leaves out
    assert resolve_method(section, "finetune").options.head == "fresh"


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"kd": {"method": "kd"}}, "variants.kd: 'kd' is a registered method"),
        ({"x": {"method": "nope"}}, "variants.x.method: unknown method 'nope'"),
        ({"x": {"method": "finetune", "options": {"head": "big"}}}, "variants.x.options.head: got 'big'"),
    ],
)
def test_bad_variants_are_one_line_errors(variants, message):
    from edgekd.config.loading import load_recipe

    with pytest.raises(EdgekdError) as info:
        load_recipe("recipes/quickstart.yaml", [f"distill.variants={json.dumps(variants)}"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_reference_is_an_error():
    from edgekd.config.loading import load_recipe

    with pytest.raises(EdgekdError, match=r"^report\.reference: 'finetune' is not trained by this recipe"):
        load_recipe("recipes/quickstart.yaml", ["report.reference=finetune"])


def test_tune_grid_accepts_only_student_fields():
    from edgekd.tune import parse_grid

    axis = parse_grid("distill.skd={fm_scale: 0.1, tm_scale: 0.1},{fm_scale: 1, tm_scale: 1}")
    assert axis.values == ["{fm_scale: 0.1, tm_scale: 0.1}", "{fm_scale: 1, tm_scale: 1}"]
    assert parse_grid("train.optimizer.lr=0.05, 0.1").values == ["0.05", "0.1"]
    with pytest.raises(EdgekdError, match=r"^--grid: 'data.per_class' is not tunable here"):
        parse_grid("data.per_class=5,10")


def test_freshly_created_head_is_seeded():
    _, a = make_finetune()
    _, b = make_finetune()
    assert isinstance(a.student.classifier, nn.Linear)
    assert torch.equal(a.student.classifier.weight, b.student.classifier.weight)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_build_over_seeds_pairs_every_method_on_one_draw_per_seed(cli, write_recipe, tmp_path):
    data = {**CUSTOMER, "dataset": "digits", "batch_size": 16}
    distill = {
        "method": "kd",
        "baselines": ["scratch", "ft_restricted"],
        "variants": {"ft_restricted": {"method": "finetune", "options": {"head": "restricted"}}},
    }
    result = cli("build", write_recipe(data=data, distill=distill), "--quiet", "--seeds", "0,1,2")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    # every method of a seed trained and was selected on the same images; the draws differ across seeds
    draws, methods = {}, ("kd", "scratch", "ft_restricted")
    for seed in (0, 1, 2):
        seen = {(run_dir / "train" / m / f"seed{seed}" / "images.json").read_text() for m in methods}
        assert len(seen) == 1
        draws[seed] = seen.pop()
    assert len(set(draws.values())) == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = {r["name"]: r for r in metrics["models"]}
    for name in ("kd", "ft_restricted"):
        paired = records[name]["paired"]
        per_seed = {run["seed"]: run["test_acc"] for run in records[name]["per_seed"]}
        scratch = {run["seed"]: run["test_acc"] for run in records["scratch"]["per_seed"]}
        assert paired["reference"] == "scratch" and paired["seeds"] == [0, 1, 2]
        assert paired["differences"] == [round(per_seed[s] - scratch[s], 4) for s in (0, 1, 2)]
        assert paired["interval"][0] <= paired["mean"] <= paired["interval"][1]
    assert records["kd"]["labelled_images"] == {"train": 50, "selection": 25}  # 10 and 5 of each of 5 digits
    assert records["kd"]["unlabeled_images"] > 0 and records["scratch"]["unlabeled_images"] == 0
    assert (
        records["ft_restricted"]["method"] == "finetune"
        and records["ft_restricted"]["options"]["head"] == "restricted"
    )
    student = metrics["data"]["student"]
    assert student["student_pool"] == "customer" and student["draw_seeds"] == [0, 1, 2]
    assert 0 < student["unlabeled"]["teacher_acc"] <= 100
    assert metrics["environment"]["cpu_isa"] and metrics["environment"]["cpu_vendor"]
    assert "Δ vs scratch [95% CI, t]" in result.output and "what each model used" in result.output
    report = (run_dir / "report.md").read_text()
    assert "### Paired comparison with `scratch`" in report and "customer hold-out" in report
    assert "teacher's top-1 on the student's" in report


@pytest.mark.slow
def test_tune_scores_variants_on_validation_and_never_on_test(cli, write_recipe, tmp_path):
    data = {**CUSTOMER, "dataset": "digits", "batch_size": 16, "unlabeled": "none"}
    recipe = write_recipe(data=data, distill={"method": "kd", "baselines": ["scratch"]})
    result = cli("tune", recipe, "--quiet", "--seeds", "0,1", "--grid", "distill.kd.temperature=2,4")
    assert result.exit_code == 0, result.output
    tuned = json.loads((tmp_path / "runs" / "tiny-tune-kd" / "tune.json").read_text())
    assert [row["label"] for row in tuned["variants"]] == [
        "distill.kd.temperature=2",
        "distill.kd.temperature=4",
    ]
    assert tuned["best"] in {row["label"] for row in tuned["variants"]}
    assert "test" not in json.dumps(tuned["variants"])  # nothing about the test split is even computed
    assert tuned["variants"][1]["paired_vs_first"]["metric"] == "val_acc"
    assert "test never evaluated" in result.output
    bad = cli("tune", recipe, "--grid", "data.per_class=5,10")
    assert bad.exit_code == 2 and "is not tunable here" in bad.output
    # another method's tune, even started over, keeps its own folder and leaves kd's result
    other = cli(
        "tune",
        recipe,
        "--quiet",
        "--force",
        "--method",
        "scratch",
        "--seeds",
        "0",
        "--set",
        "train.epochs=1",
        "--grid",
        "train.optimizer.lr=0.05,0.1",
    )
    assert other.exit_code == 0, other.output
    assert (
        json.loads((tmp_path / "runs" / "tiny-tune-scratch" / "tune.json").read_text())["method"] == "scratch"
    )
    assert json.loads((tmp_path / "runs" / "tiny-tune-kd" / "tune.json").read_text()) == tuned
