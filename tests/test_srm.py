"""SRM (paper 004): sparse codes, their chunked computation, the three stages, the dictionaries artifact."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config.train import TrainConfig
from edgekd.distill import DistillContext, get_method
from edgekd.distill.methods.srm import (
    SRMDictionaries,
    SRMPretrain,
    SRMTask,
    srm_plan,
    teacher_fingerprint,
    term_weights,
)
from edgekd.distill.plan import describe_plan
from edgekd.distill.sparse_coding import (
    SparseDictionary,
    label_losses,
    pixel_log_likelihood,
    reconstruction_error,
    reconstruction_mse,
    sparse_code,
    sparse_labels,
)
from edgekd.errors import EdgekdError
from edgekd.models import create_model

DIGITS_SHAPE = (1, 8, 8)  # `digits` and `teacher` (a briefly trained resnet20) come from conftest.py


def srm_stage(objective, teacher, class_ids=tuple(range(10)), student=None, **options):
    torch.manual_seed(1)
    student = student or create_model("resnet8", 10, 1, width=8)
    context = DistillContext(10, class_ids, input_shape=DIGITS_SHAPE)
    return objective(student, teacher, get_method("srm").options(**{"sparsity": 0.1, **options}), context)


# ------------------------------------------------------------------------------------------- codes
def test_sparse_code_keeps_exactly_the_k_largest_similarities():
    torch.manual_seed(0)
    similarities = torch.rand(3, 50, 20)
    codes, largest = sparse_code(similarities, 4)
    assert ((codes != 0).sum(-1) == 4).all()
    kept_values = codes.sort(-1, descending=True).values[..., :4]
    assert torch.equal(kept_values, similarities.sort(-1, descending=True).values[..., :4])
    assert torch.equal(codes[codes != 0], similarities[codes != 0])  # kept values are the similarities
    assert torch.equal(largest, similarities.argmax(-1))


def test_sparse_code_breaks_ties_towards_the_lower_atom_index():
    similarities = torch.tensor([[[0.25, 0.75, 0.5, 0.75, 0.75, 0.125]]])
    codes, largest = sparse_code(similarities, 2)
    assert codes.tolist() == [[[0.0, 0.75, 0.0, 0.75, 0.0, 0.0]]]  # exactly k, though three tie
    assert largest.item() == 1
    all_tied = torch.full((1, 1, 5), 0.5)
    codes, largest = sparse_code(all_tied, 3)
    assert codes.tolist() == [[[0.5, 0.5, 0.5, 0.0, 0.0]]] and largest.item() == 0


def test_reconstruction_loss_falls_on_real_teacher_features(teacher, digits):
    stage = srm_stage(SRMDictionaries, teacher)
    images = digits[0][:256]
    optimizer = torch.optim.Adam(stage.trainable_parameters(), lr=0.03)
    losses = []
    for step in range(40):
        batch = images[(step % 4) * 64 : (step % 4 + 1) * 64]
        loss = stage.label_free_terms(batch)["recon"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # the same four batches, first and last cycle: the codes now explain a good part of the features
    assert sum(losses[-4:]) < 0.75 * sum(losses[:4]), losses


def test_dictionary_stage_trains_only_the_dictionaries_and_leaves_the_student(teacher, digits):
    stage = srm_stage(SRMDictionaries, teacher)
    before = {k: v.clone() for k, v in stage.student.state_dict().items()}
    assert {id(p) for p in stage.trainable_parameters()} == {id(p) for p in stage.dictionaries.parameters()}
    stage.train()
    logits, terms = stage.forward_train(digits[0][:32], digits[1][:32])
    terms["recon"].backward()
    assert logits.shape == (32, 10) and set(terms) == {"recon"}
    after = stage.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    # M = floor(2·C), k = max(1, floor(0.1·M)) at the teacher's 16-, 32- and 64-channel taps
    shapes = [(d.channels, d.atoms) for d in stage.dictionaries]
    assert shapes == [(16, 32), (32, 64), (64, 128)] and stage.kept == [3, 6, 12]


# ------------------------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("form", ["similarities", "sigmoid_logits"])
def test_chunked_computation_equals_the_unchunked_one(form):
    torch.manual_seed(0)
    features = torch.randn(4, 16, 8, 8, requires_grad=True)
    teacher_dictionary, student_dictionary = SparseDictionary(16, 32), SparseDictionary(16, 32)
    whole, chunked = 10**9, 100  # 100 codes: chunks of 3 pixels per image, the last one shorter
    labels = sparse_labels(features.detach(), teacher_dictionary, 3, whole)
    labels_chunked = sparse_labels(features.detach(), teacher_dictionary, 3, chunked)
    assert torch.equal(labels.pixel, labels_chunked.pixel)
    torch.testing.assert_close(labels.image, labels_chunked.image)
    for chunk in (whole, chunked):
        pixel, image = label_losses(features, student_dictionary, labels, form, chunk)
        recon = reconstruction_error(features, teacher_dictionary, 3, chunk)
        grads = torch.autograd.grad(pixel + image + recon, [features, *student_dictionary.parameters()])
        if chunk == whole:
            expected = (pixel, image, recon, grads)
    torch.testing.assert_close((pixel, image, recon), expected[:3])
    for got, want in zip(grads, expected[3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


PEAK_MEMORY = textwrap.dedent(
    """
    import sys, torch
    from edgekd.distill.sparse_coding import SparseDictionary, label_losses, reconstruction_error, sparse_labels

    def peak_mib():
        # VmHWM: this process's peak resident memory. Not ru_maxrss, which Linux carries over from the
        # forked parent (pytest, possibly large) through exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    torch.manual_seed(0)
    chunk = int(sys.argv[1])
    # a CIFAR-size first tap: batch 64, 64 channels at 32x32, 128 atoms: 8.4 M codes (33.5 MB of floats)
    features = torch.randn(64, 64, 32, 32, requires_grad=True)
    teacher, student = SparseDictionary(64, 128), SparseDictionary(64, 128)
    small = torch.randn(2, 64, 4, 4, requires_grad=True)  # warm-up: kernels and allocator pools
    small_labels = sparse_labels(small.detach(), teacher, 12, chunk)
    sum(label_losses(small, student, small_labels, "similarities", chunk)).backward()
    before = peak_mib()
    labels = sparse_labels(features.detach(), teacher, 12, chunk)
    sum(label_losses(features, student, labels, "similarities", chunk)).backward()
    reconstruction_error(features.detach(), teacher, 12, chunk).backward()
    print(peak_mib() - before)
    """
)


def peak_extra_mib(chunk_elements: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(chunk_elements)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


@pytest.mark.slow
def test_peak_memory_of_the_codes_stays_bounded_on_a_cifar_size_tap():
    """Stated bound: with the default 2^18 codes per chunk, the stage-1 and stage-2 computations (forward and
    backward) on a CIFAR-size tap raise the process's peak memory by under 128 MiB: the input's gradient and
    a few chunks, not the 8.4 M codes (the unchunked computation needs over twice as much)."""
    chunked = peak_extra_mib(1 << 18)
    unchunked = peak_extra_mib(10**9)
    assert chunked < 128, chunked
    assert chunked < 0.5 * unchunked, (chunked, unchunked)


# ------------------------------------------------------------------------------------------- labels
def test_pixel_and_image_labels_against_a_hand_computation():
    dictionary = SparseDictionary(2, 3)
    with torch.no_grad():
        dictionary.atoms_matrix.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]]))
        dictionary.bias.fill_(0.0)
    # one image of 2 channels, 1x2 pixels: p0 = (2, 0), p1 = (0, 3)
    features = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0]]]])
    labels = sparse_labels(features, dictionary, k=2)
    s = torch.sigmoid
    # p0: xᵀD = (2, 0, -2) -> keeps atoms 0, 1; p1: xᵀD = (0, 3, 3) -> keeps 1, 2 (tie: both kept)
    code0 = torch.tensor([s(torch.tensor(2.0)), s(torch.tensor(0.0)), 0.0])
    code1 = torch.tensor([0.0, s(torch.tensor(3.0)), s(torch.tensor(3.0))])
    assert labels.pixel.tolist() == [[0, 1]]  # p1: atoms 1 and 2 tie, the lower index wins
    torch.testing.assert_close(labels.image, ((code0 + code1) / 2).unsqueeze(0))


def test_student_losses_against_a_hand_computation():
    dictionary = SparseDictionary(2, 3)
    with torch.no_grad():
        dictionary.atoms_matrix.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]]))
        dictionary.bias.fill_(0.5)
    features = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0]]]])
    target = sparse_labels(features, dictionary, k=1)
    target = type(target)(torch.tensor([[2, 0]]), torch.tensor([[0.25, 0.5, 0.75]]))
    arguments = torch.tensor([[2.5, 0.5, -1.5], [0.5, 3.5, 3.5]])
    similarities = torch.sigmoid(arguments)
    normalised = similarities / similarities.sum(1, keepdim=True)
    paper_ce = -(normalised[0, 2].log() + normalised[1, 0].log()) / 2
    code_ce = F.cross_entropy(similarities, torch.tensor([2, 0]))
    image = similarities.mean(0)
    bce = -(
        torch.tensor([0.25, 0.5, 0.75]) * image.log() + torch.tensor([0.75, 0.5, 0.25]) * (1 - image).log()
    )
    for form, ce in (("similarities", paper_ce), ("sigmoid_logits", code_ce)):
        pixel_loss, image_loss = label_losses(features, dictionary, target, form)
        torch.testing.assert_close(pixel_loss, ce)
        torch.testing.assert_close(image_loss, bce.mean())
    with pytest.raises(ValueError, match="pixel_ce"):
        pixel_log_likelihood(arguments, "softmax")


def test_reconstruction_mse_is_the_mean_over_pixels_and_channels():
    torch.manual_seed(0)
    features, dictionary = torch.randn(2, 4, 3, 3), SparseDictionary(4, 8)
    codes, _ = sparse_code(torch.sigmoid(features.flatten(2).transpose(1, 2) @ dictionary.atoms_matrix), 2)
    expected = F.mse_loss((codes @ dictionary.atoms_matrix.T).transpose(1, 2).reshape(2, 4, 3, 3), features)
    torch.testing.assert_close(reconstruction_mse(features, dictionary, 2), expected)


# ------------------------------------------------------------------------------------------- taps
def test_a_tap_size_mismatch_names_the_compatible_student_taps(teacher):
    with pytest.raises(EdgekdError) as error:
        srm_stage(SRMDictionaries, teacher, teacher_taps=[0], student_taps=[2])
    message = str(error.value)
    assert "student_taps" in message and "is 2x2" in message and "8x8" in message
    assert "student taps of 8x8: 0=layer1" in message
    # a teacher tap no student tap can pair with (the student only declares taps of other sizes)
    with pytest.raises(
        EdgekdError, match=r"teacher_taps: teacher tap 'layer1' \(8x8\) has no student tap"
    ) as error:
        srm_stage(SRMDictionaries, teacher, teacher_taps=[0, 1], student=StudentWithoutTheFirstTap())
    assert "the student has no tap of 8x8 (its taps: 0=pool 4x4)" in str(error.value)


class StudentWithoutTheFirstTap(nn.Module):
    def __init__(self):
        super().__init__()
        self.taps = ["pool"]
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.classifier(self.pool(self.conv(x)).flatten(1))


# ------------------------------------------------------------------------------------------- artifact
def test_dictionaries_reload_from_the_saved_artifact_to_the_same_codes(teacher, digits, tmp_path):
    first = srm_stage(SRMDictionaries, teacher)
    with torch.no_grad():
        for dictionary in first.dictionaries:  # not the initial values: something learnt
            dictionary.atoms_matrix.mul_(1.5).add_(0.1)
            dictionary.bias.fill_(-0.3)
    path = tmp_path / "dictionaries.pt"
    torch.save(first.artifact("dictionaries"), path)
    payload = torch.load(path, weights_only=True)
    second = srm_stage(SRMPretrain, teacher)
    second.use_artifact("dictionaries", payload)
    images = digits[0][:16]
    _, maps = first.teacher_features(images)
    for features, original, reloaded, k in zip(
        maps, first.dictionaries, second.teacher_dictionaries, first.kept, strict=True
    ):
        want, got = sparse_labels(features, original, k), sparse_labels(features, reloaded, k)
        assert torch.equal(want.pixel, got.pixel) and torch.equal(want.image, got.image)


def test_loaded_dictionaries_must_fit_the_teacher_and_the_options(teacher):
    payload = srm_stage(SRMDictionaries, teacher).artifact("dictionaries")
    assert payload["teacher"] == teacher_fingerprint(teacher)
    other_teacher = create_model("resnet20", 10, 1).eval()
    with pytest.raises(EdgekdError, match="learnt on another teacher"):
        srm_stage(SRMPretrain, other_teacher).use_artifact("dictionaries", payload)
    with pytest.raises(
        EdgekdError, match=r"atoms_per_channel 2\.0, the recipe's distill\.srm\.atoms_per_channel is 3"
    ):
        srm_stage(SRMPretrain, teacher, atoms_per_channel=3.0).use_artifact("dictionaries", payload)
    with pytest.raises(EdgekdError, match="not an SRM dictionaries file"):
        srm_stage(SRMPretrain, teacher).use_artifact("dictionaries", {"format": "other"})


# ------------------------------------------------------------------------------------------- stages 2, 3
def test_pretrain_stage_trains_the_student_up_to_its_taps_and_its_dictionaries(teacher, digits):
    stage = srm_stage(SRMPretrain, teacher)
    stage.use_artifact("dictionaries", srm_stage(SRMDictionaries, teacher).artifact("dictionaries"))
    trained = {id(p) for p in stage.trainable_parameters()}
    assert not trained & {id(p) for p in stage.student.classifier.parameters()}
    assert not trained & {id(p) for p in stage.teacher_dictionaries.parameters()}
    assert {id(p) for p in stage.student_dictionaries.parameters()} <= trained
    assert {id(p) for p in stage.student.conv1.parameters()} <= trained
    logits, terms = stage.forward_train(digits[0][:32], digits[1][:32])
    assert set(terms) == {"pixel_ce", "image_bce"} and logits.shape == (32, 10)
    grads = torch.autograd.grad(sum(terms.values()), stage.trainable_parameters(), allow_unused=True)
    assert all(g is not None for g in grads)


def test_pretrain_terms_weigh_as_the_papers_sums_by_default(teacher, digits):
    # eq. 4-5: Σ_n Σ_ij CE and Σ_n BCE; divided by N·P (P the largest tap's pixels), a tap's pixel term
    # weighs H·W/P and its image term 1/P, against the per-pixel / per-image means of label_losses
    images = digits[0][:16]
    dictionaries = srm_stage(SRMDictionaries, teacher).artifact("dictionaries")
    stage = srm_stage(SRMPretrain, teacher)  # seeded: the same student and dictionaries every call
    stage.use_artifact("dictionaries", dictionaries)
    assert stage.options.balance == "paper"
    _, maps = stage.student_features(images)
    means = [
        label_losses(features, dictionary, labels)
        for features, dictionary, labels in zip(
            maps, stage.student_dictionaries, stage.teacher_labels(images), strict=True
        )
    ]
    pixels = [features.shape[-2] * features.shape[-1] for features in maps]
    assert len(set(pixels)) > 1  # taps of different sizes: the weights differ from tap to tap
    largest = max(pixels)
    _, paper = stage.distill_terms(images)
    assert paper["pixel_ce"].item() == pytest.approx(
        sum(count / largest * pixel.item() for count, (pixel, _) in zip(pixels, means, strict=True)), rel=1e-5
    )
    assert paper["image_bce"].item() == pytest.approx(
        sum(image.item() for _, image in means) / largest, rel=1e-5
    )
    mean_stage = srm_stage(SRMPretrain, teacher, balance="mean")
    mean_stage.use_artifact("dictionaries", dictionaries)
    _, mean = mean_stage.distill_terms(images)
    assert mean["pixel_ce"].item() == pytest.approx(sum(pixel.item() for pixel, _ in means), rel=1e-5)
    assert term_weights([64, 16], "paper") == [(1.0, 1 / 64), (0.25, 1 / 64)]


def test_kd_stage_says_whether_it_used_kd_or_ce_alone(teacher, digits):
    kd = srm_stage(SRMTask, teacher)
    assert kd.uses_kd and kd.stage_notes().startswith("KD") and "T=4" in kd.stage_notes()
    assert set(kd.forward_train(digits[0][:8], digits[1][:8])[1]) == {"ce", "kd"}
    cross_task = srm_stage(SRMTask, teacher, class_ids=None)
    assert not cross_task.uses_kd and not cross_task.learns_from_unlabeled
    assert "CE alone" in cross_task.stage_notes()
    assert set(cross_task.forward_train(digits[0][:8], digits[1][:8])[1]) == {"ce"}


def test_plan_splits_the_epochs_and_places_the_check_between_pretraining_and_kd():
    options = get_method("srm").options(transfer_check={"train": "head", "epochs": 5})
    stages = srm_plan(options, TrainConfig(epochs=90))
    assert [s.name for s in stages] == ["dictionaries", "pretrain", "check", "kd"]
    assert [s.epochs for s in stages] == [11, 40, 5, 50]
    assert [s.branch for s in stages] == [False, False, True, False]
    assert stages[-1].fresh_head and stages[-1].consumes[0].name == "pretrained_student"
    assert "[check: check" in describe_plan(stages)
    with pytest.raises(EdgekdError, match="pretrain_epochs: 90 leaves no KD stage"):
        srm_plan(get_method("srm").options(pretrain_epochs=90), TrainConfig(epochs=90))


# ------------------------------------------------------------------------------------------- builds
SRM = {
    "method": "srm",
    "baselines": ["kd", "fitnet"],
    "srm": {
        "sparsity": 0.1,
        "dictionary_epochs": 1,
        "pretrain_epochs": 1,
        "transfer_check": {"train": "head", "epochs": 1},
    },
    "fitnet": {"hint_epochs": 1, "transfer_check": {"train": "all", "epochs": 1}},
}
TRAIN = {"epochs": 3, "optimizer": {"lr": 0.1}}


def build(tmp_path, name: str, distill: dict, **sections):
    import yaml
    from click.testing import CliRunner
    from conftest import TINY_RECIPE

    from edgekd.cli import main
    from edgekd.layout import RunLayout
    from edgekd.records import RunMetrics

    recipe = {**yaml.safe_load(yaml.safe_dump(TINY_RECIPE)), "name": name, "output_dir": str(tmp_path)}
    recipe.update(distill=distill, train=TRAIN, **sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    layout = RunLayout(tmp_path / name)
    return layout, RunMetrics.load(layout.metrics)


@pytest.fixture(scope="module")
def srm_run(tmp_path_factory):
    """A tiny SRM build (checks on, FitNet and KD beside it), exported to ONNX."""
    return build(
        tmp_path_factory.mktemp("srm"),
        "srm",
        SRM,
        export={"targets": {"onnx": ["fp32"]}},
        benchmark={"batches": [1]},
    )


@pytest.mark.slow
def test_a_build_records_every_stage_its_notes_and_the_checks(srm_run):
    layout, metrics = srm_run
    stages = {stage.stage: stage for stage in metrics.main.stages}
    assert list(stages) == ["dictionaries", "pretrain", "check", "kd"]
    assert (
        stages["dictionaries"].notes.startswith("teacher dictionaries")
        and stages["dictionaries"].select == "metric"
    )
    assert any(name.endswith(".val_r2") for name in stages["dictionaries"].measures)
    assert any(name.endswith(".val_pixel_agree") for name in stages["pretrain"].measures)
    assert stages["check"].branch and stages["check"].test_acc is not None
    assert stages["kd"].notes.startswith("KD") and not stages["kd"].branch
    report = layout.report_md.read_text()
    assert "### Quality of the intermediate transfer" in report
    assert (
        "| srm | check | check (linear probing)" in report
        and "| fitnet | check | check (whole network" in report
    )


@pytest.mark.slow
def test_the_exported_student_has_exactly_the_students_parameters(srm_run):
    import onnx

    _, metrics = srm_run
    fresh = create_model("resnet8", 10, 1, width=8)
    saved = torch.load(metrics.main.checkpoint, weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(v.shape) for k, v in fresh.state_dict().items()
    }
    assert metrics.main.params == sum(p.numel() for p in fresh.parameters())
    (exported,) = [a.path for a in metrics.artifacts if a.format == "onnx"]
    # every weight matrix/kernel of the graph is one of the student's (BatchNorm folds into the convolutions):
    # no dictionary (C x M matrix) or connector came along
    graph_weights = sorted(tuple(t.dims) for t in onnx.load(exported).graph.initializer if len(t.dims) >= 2)
    student_weights = sorted(tuple(p.shape) for p in fresh.parameters() if p.dim() >= 2)
    assert graph_weights == student_weights


@pytest.mark.slow
def test_a_check_hands_nothing_on_and_loaded_dictionaries_skip_stage_one(srm_run, tmp_path):
    layout, producer = srm_run
    dictionaries = layout.method("srm").stage("dictionaries").artifact("dictionaries.pt")
    without_check = {
        **SRM,
        "baselines": [],
        "srm": {k: v for k, v in SRM["srm"].items() if k != "transfer_check"},
    }
    _, plain = build(tmp_path, "plain", without_check, benchmark={"enabled": False})
    assert [s.stage for s in plain.main.stages] == ["dictionaries", "pretrain", "kd"]
    assert plain.main.test_acc == producer.main.test_acc
    assert [s.best_epoch for s in plain.main.stages] == [
        s.best_epoch for s in producer.main.stages if not s.branch
    ]
    loading = {**without_check, "artifacts": {"srm": {"dictionaries": str(dictionaries)}}}
    _, consumer = build(tmp_path, "consumer", loading, benchmark={"enabled": False})
    first, pretrain, _ = consumer.main.stages
    assert first.skipped is not None and pretrain.consumes[0].origin == "loaded"
    assert consumer.main.test_acc == producer.main.test_acc


def test_channel_moments_give_the_squared_deviation_from_each_channels_mean():
    from edgekd.distill.methods.srm import ChannelMoments

    torch.manual_seed(0)
    parts = [torch.randn(3, 4, 2, 2) + 5, torch.randn(2, 4, 2, 2) * 3]
    moments = ChannelMoments()
    for part in parts:
        moments.add(part)
    whole = torch.cat(parts).double()
    expected = (whole - whole.mean((0, 2, 3), keepdim=True)).square().sum()
    assert moments.elements == whole.numel()
    assert abs(moments.total - float(expected)) < 1e-9 * float(expected)
