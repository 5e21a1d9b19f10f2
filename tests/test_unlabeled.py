"""Unlabelled images (`data.unlabeled`): label-free distillation terms, and the trainer that feeds them."""

from __future__ import annotations

import pytest
import torch

import edgekd.distill.methods  # noqa: F401  (registers every method)
from edgekd.config.data import DataConfig
from edgekd.config.train import TrainConfig
from edgekd.data import build_data
from edgekd.distill import DistillContext, get_method
from edgekd.models import create_model
from edgekd.train import Trainer

SUBSET = [1, 3, 5, 7, 9]
SHAPE = (1, 8, 8)
# Options that switch on every label-free term a method has (FitNet: hint and KD in its task stage).
TEACHER_METHODS = {
    "kd": {},
    "fitnet": {"hint_epochs": 0, "task_hint_weight": 10.0, "kd_alpha": 0.5},
    "at": {},
    "rkd": {},
    "ofd": {},
    "skd": {},
}


@pytest.fixture(scope="module")
def data():
    return build_data(DataConfig(classes=SUBSET, per_class=10, batch_size=16, unlabeled="subset"))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", 10, 1, width=16).eval()


def make_distiller(method: str, teacher, **options):
    torch.manual_seed(1)
    student = create_model("resnet8", len(SUBSET), 1, width=8)
    entry = get_method(method)
    context = DistillContext(len(SUBSET), tuple(SUBSET), input_shape=SHAPE)
    return entry.distiller(student, teacher, entry.options(**options), context)


@pytest.mark.parametrize("method", sorted(TEACHER_METHODS))
def test_label_free_terms_are_the_distillation_terms_and_train_the_student(method, teacher, data):
    distiller = make_distiller(method, teacher, **TEACHER_METHODS[method]).train()
    assert distiller.learns_from_unlabeled
    images, labels = next(iter(data.eval_loader("train")))
    _, labelled = distiller.forward_train(images, labels)
    free = distiller.label_free_terms(images)
    assert set(free) == set(labelled) - {"ce"} and free
    for name, value in free.items():
        torch.testing.assert_close(value, labelled[name], msg=name)
    sum(free.values()).backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", ["scratch", "finetune"])
def test_baselines_without_a_teacher_term_have_no_label_free_term(method, teacher):
    entry = get_method(method)
    assert not entry.distiller.learns_from_unlabeled
    with pytest.raises(NotImplementedError):
        make_distiller(method, teacher).label_free_terms(torch.zeros(2, *SHAPE))


class StopAfterFirstEpoch(Trainer):
    """Interrupted like Ctrl-C once the first epoch's checkpoint is written."""

    def _end_epoch(self, epoch, row):
        super()._end_epoch(epoch, row)
        if epoch == 0:
            raise KeyboardInterrupt


def trainer(data, teacher, out_dir, *, method: str = "skd", cls=Trainer) -> Trainer:
    return cls(
        make_distiller(method, teacher),
        data,
        TrainConfig(epochs=3, optimizer={"lr": 0.05}),
        seed=0,
        out_dir=out_dir,
        device=torch.device("cpu"),
        label=method,
    )


def without_times(history):
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in history]


def test_trainer_feeds_unlabeled_batches_and_resumes_to_the_same_numbers(data, teacher, tmp_path):
    whole = trainer(data, teacher, tmp_path / "whole")
    result = whole.fit()
    row = result.history[-1]
    assert row["train_fm_unlabeled"] > 0 and row["train_tm_unlabeled"] > 0
    assert row["train_loss"] == pytest.approx(
        sum(row[f"train_{name}"] for name in ("ce", "fm", "tm", "fm_unlabeled", "tm_unlabeled")), rel=1e-5
    )
    # Interrupted after one epoch, then resumed: the unlabelled draws depend only on (seed, epoch).
    with pytest.raises(KeyboardInterrupt):
        trainer(data, teacher, tmp_path / "split", cls=StopAfterFirstEpoch).fit()
    resumed = trainer(data, teacher, tmp_path / "split")
    assert without_times(resumed.fit(resume=True).history) == without_times(result.history)
    for name, value in whole.distiller.student.state_dict().items():
        assert torch.equal(value, resumed.distiller.student.state_dict()[name]), name
    plain = trainer(data, teacher, tmp_path / "scratch", method="scratch").fit()
    assert not any(key.endswith("_unlabeled") for key in plain.history[-1])
