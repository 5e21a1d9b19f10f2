"""REFILLED's pieces against brute force and hand computations, and its two stages on real digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import edgekd.distill.methods  # noqa: F401  (registers every method)
from edgekd.config.data import DataConfig
from edgekd.config.train import TrainConfig
from edgekd.data import DataPlan
from edgekd.distill import DistillContext, get_method
from edgekd.distill.embedding import clustering_nmi, embedding_tap, nearest_neighbour_accuracy
from edgekd.distill.features import FeatureCapture
from edgekd.distill.methods.refilled import (
    RefilledClassifier,
    RefilledEmbedding,
    bernoulli_kl,
    class_centres,
    local_kd,
    local_posterior,
    semi_hard_triplets,
    triplet_logits,
)
from edgekd.distill.methods.rkd import pairwise_distances
from edgekd.distill.methods.rkd_ft import RKDEmbedding
from edgekd.models import create_model

SHAPE = (1, 8, 8)


def brute_force_triplets(distances: torch.Tensor, labels: torch.Tensor, margin: float) -> list[tuple]:
    found = []
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
        if a != p and labels[a] == labels[p] and labels[a] != labels[n]:
            gap = distances[a, n] - distances[a, p]
            if 0 < gap <= margin:
                found.append((a, p, n))
    return found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_mining_matches_a_brute_force_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(12, 5, generator=generator), dim=1)
    labels = torch.randint(0, 3, (12,), generator=generator)
    distances = pairwise_distances(embeddings)
    for margin in (0.05, 0.2, 1.0):
        mined = [tuple(t) for t in semi_hard_triplets(distances, labels, margin).tolist()]
        assert mined == brute_force_triplets(distances, labels, margin)
    assert len(brute_force_triplets(distances, labels, 1.0)) > 0  # the check is not vacuous


def test_triplet_logit_and_bernoulli_kl_by_hand():
    distances = torch.tensor([[0.0, 0.3, 0.5], [0.3, 0.0, 0.4], [0.5, 0.4, 0.0]])
    triplets = torch.tensor([[0, 1, 2]])  # anchor 0, positive 1, negative 2
    assert triplet_logits(distances, triplets).item() == pytest.approx(0.5 - 0.3)
    t, s = 0.7, -0.4
    p, q = 1 / (1 + math.exp(-t)), 1 / (1 + math.exp(-s))
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert bernoulli_kl(torch.tensor(t), torch.tensor(s)).item() == pytest.approx(expected, rel=1e-6)
    assert bernoulli_kl(torch.tensor(3.0), torch.tensor(3.0)).item() == pytest.approx(0.0, abs=1e-7)
    # eq. 4 of the paper is the sigmoid of the gap over tau
    tau, d_ap, d_an = 4.0, 0.3, 0.5
    eq4 = math.exp(-d_ap / tau) / (math.exp(-d_ap / tau) + math.exp(-d_an / tau))
    assert torch.sigmoid(torch.tensor((d_an - d_ap) / tau)).item() == pytest.approx(eq4, rel=1e-6)


def test_class_centres_and_local_posterior_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 2, 0, 2])
    centres = class_centres(embeddings, labels, 3)
    assert torch.allclose(centres, torch.tensor([[1.0, 0.5], [0.0, 0.0], [1.5, 1.0]]))
    present = torch.tensor([0, 2])
    posterior = local_posterior(embeddings[:1], centres, present, temperature=2.0)
    # squared distances of (1, 0) to the centres (1, .5) and (1.5, 1): .25 and 1.25
    expected = torch.softmax(torch.tensor([-0.25 / 2, -1.25 / 2]), dim=0)
    assert torch.allclose(posterior[0], expected)
    logits = torch.tensor([[2.0, 9.0, 0.0]])  # class 1 is absent from the batch: its logit plays no part
    student = torch.softmax(torch.tensor([2.0, 0.0]) / 2.0, dim=0)
    kl = float((expected * (expected.log() - student.log())).sum())
    assert local_kd(logits, posterior, present, 2.0).item() == pytest.approx(kl, rel=1e-5)


@pytest.fixture
def networks():
    torch.manual_seed(0)
    teacher = create_model("resnet8", 5, 1).eval()
    student = create_model("resnet8", 5, 1, width=8)
    options = get_method("refilled").options()
    context = DistillContext(5, None, input_shape=SHAPE)  # disjoint: the teacher has none of these classes
    return teacher, student, options, context


def test_a_batch_without_triplets_is_a_finite_zero_with_finite_gradients(networks):
    teacher, student, options, context = networks
    stage = RefilledEmbedding(student, teacher, options, context)
    images = torch.randn(4, *SHAPE)
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 1, 1])):  # no positive / no negative
        _, terms = stage.forward_train(images, labels)
        assert terms["triplet"].item() == 0.0
        stage.zero_grad()
        terms["triplet"].backward()
        grads = [p.grad for p in stage.trainable_parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_the_embedding_stage_trains_the_embedding_only_and_lowers_its_loss(networks, digits_batches):
    teacher, student, options, context = networks
    stage = RefilledEmbedding(student, teacher, options, context)
    trained = {id(p) for p in stage.trainable_parameters()}
    assert not any(id(p) in trained for p in student.classifier.parameters())
    assert all(id(p) in trained for p in student.layer1.parameters())
    optimizer = torch.optim.SGD(stage.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for images, labels in digits_batches * 6:
        _, terms = stage.forward_train(images, labels)
        optimizer.zero_grad()
        terms["triplet"].backward()
        optimizer.step()
        losses.append(terms["triplet"].item())
    assert all(math.isfinite(v) for v in losses) and sum(losses[-3:]) < sum(losses[:3]), losses


def test_the_plan_is_an_embedding_stage_then_a_classifier_stage_with_a_fresh_head():
    entry = get_method("refilled")
    embedding, classifier = entry.plan(entry.options(), TrainConfig(epochs=10))
    assert (embedding.name, embedding.select, embedding.epochs, embedding.fresh_head) == (
        "embedding",
        "metric",
        5,
        False,
    )
    assert (classifier.name, classifier.epochs, classifier.fresh_head) == ("classifier", 5, True)
    assert entry.supported_relations(entry.options()) == {"same", "subset", "disjoint"}


def test_the_classifier_stage_adds_local_kd_from_global_centres(networks, digits_batches):
    teacher, student, options, context = networks
    options = options.model_copy(update={"centres": "global"})
    stage = RefilledClassifier(student, teacher, options, context)
    data = DataPlan(
        DataConfig(classes=[5, 6, 7, 8, 9], per_class=10), teacher_classes=[0, 1, 2, 3, 4]
    ).student(0)
    stage.prepare_stage(data, torch.device("cpu"))
    # one centre per student class, in the teacher's 64-wide embedding, each the mean of unit vectors
    assert stage.centres.shape == (5, 64) and (stage.centres.norm(dim=1) <= 1 + 1e-6).all()
    images, labels = digits_batches[0]
    _, terms = stage.forward_train(images, labels)
    assert set(terms) == {"ce", "local_kd"} and terms["local_kd"].item() > 0
    decaying = RefilledClassifier(student, teacher, options.model_copy(update={"kd_decay": 0.5}), context)
    decaying.on_epoch_start(2, 10)
    assert decaying.kd_weight == pytest.approx(options.kd_weight * 0.25)


def test_embedding_scores():
    gallery = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1).numpy()
    queries = F.normalize(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), dim=1).numpy()
    accuracy = nearest_neighbour_accuracy(
        gallery, torch.tensor([0, 1]).numpy(), queries, torch.tensor([0, 1, 1]).numpy()
    )
    assert accuracy == pytest.approx(200 / 3)
    separated = torch.cat([torch.randn(20, 3) * 0.01 + 5, torch.randn(20, 3) * 0.01 - 5]).numpy()
    assert clustering_nmi(separated, torch.tensor([0] * 20 + [1] * 20).numpy()) == pytest.approx(1.0)


@pytest.fixture
def digits_batches():
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = data.target >= 5
    images = torch.tensor(data.images[keep][:96], dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target[keep][:96] - 5)
    return [(images[i : i + 32], labels[i : i + 32]) for i in range(0, 96, 32)]


def test_rkd_then_finetune_is_an_embedding_stage_then_a_fresh_classifier_with_cross_entropy(networks):
    teacher, student, _, context = networks
    entry = get_method("rkd_ft")
    embedding, classifier = entry.plan(entry.options(), TrainConfig(epochs=7))
    assert (embedding.select, embedding.epochs, classifier.epochs, classifier.fresh_head) == (
        "metric",
        3,
        4,
        True,
    )
    stage = embedding.objective(student, teacher, entry.options(), context)
    assert set(stage.forward_train(torch.randn(6, *SHAPE), torch.arange(6) % 5)[1]) == {
        "rkd_distance",
        "rkd_angle",
    }
    assert not classifier.objective(student, teacher, entry.options(), context).uses_teacher


def test_teacher_probes_classify_the_students_classes_with_the_teachers_embedding():
    from edgekd.probes import probe_accuracies

    torch.manual_seed(0)
    teacher = create_model("resnet8", 5, 1).eval()
    data = DataPlan(
        DataConfig(classes=[5, 6, 7, 8, 9], per_class=10), teacher_classes=[0, 1, 2, 3, 4]
    ).student(0)
    knn = probe_accuracies("teacher_knn", teacher, data, torch.device("cpu"))
    logreg = probe_accuracies("teacher_logreg", teacher, data, torch.device("cpu"))
    # even an untrained teacher's features beat chance (20 %) on digits: the probes do classify
    assert 20 < knn["test_acc"] <= 100 and 20 < logreg["test_acc"] <= 100
    assert logreg["logreg_c"] in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_list_methods_shows_stages_and_label_relations(cli):
    output = cli("list", "methods").output
    # each stage with its selection rule, and the artifacts it hands on in brackets
    assert "embedding (metric) [embedding.pt] -> classifier (train.select)" in output
    assert "hint (last) [hinted_student.pt] -> task (train.select)" in output
    kd_block = output[output.index("\nkd ") : output.index("\nofd ")]
    assert kd_block.rstrip().endswith("label relations: same, subset")


# ------------------------------------------------------------------------------------------ the paper's defaults
def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def chord(degrees: float) -> float:
    """Distance between two unit vectors `degrees` apart."""
    return 2 * math.sin(math.radians(degrees) / 2)


def test_the_default_triplet_loss_softens_the_teachers_probabilities_only(networks):
    teacher, student, options, context = networks
    stage = RefilledEmbedding(student, teacher, options, context)
    labels = torch.tensor([0, 0, 1])
    # student at 0°, 60°, 70°: the only semi-hard triplet is (0, 1, 2), gap chord(70) - chord(60) = 0.147
    student_embedding = torch.tensor([unit(0), unit(60), unit(70)], dtype=torch.float64)
    teacher_embedding = torch.tensor([unit(0), unit(40), unit(90)], dtype=torch.float64)
    teacher_gap, student_gap = chord(90) - chord(40), chord(70) - chord(60)

    def hand_loss(student_tau: float) -> float:
        p = 1 / (1 + math.exp(-teacher_gap / 4.0))  # the teacher's τ = 4 (§4.2)
        q = 1 / (1 + math.exp(-student_gap / student_tau))
        return options.triplet_weight * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))

    loss = stage.triplet_loss(student_embedding, teacher_embedding, labels).item()
    assert loss == pytest.approx(hand_loss(1.0), rel=1e-9)  # §4.2: no temperature on the student's side
    assert abs(hand_loss(1.0) - hand_loss(4.0)) > 1.0  # the check tells the two apart
    softened = options.model_copy(update={"student_temperature": 4.0})  # still configurable
    loss = RefilledEmbedding(student, teacher, softened, context).triplet_loss(
        student_embedding, teacher_embedding, labels
    )
    assert loss.item() == pytest.approx(hand_loss(4.0), rel=1e-9)


def test_the_default_classifier_stage_is_the_papers_per_batch_centres_and_decaying_weight(
    networks, digits_batches
):
    teacher, student, options, context = networks
    stage = RefilledClassifier(student, teacher, options, context)
    assert stage.centres is None  # nothing computed over the training set: eq. 7 is per batch
    images, labels = digits_batches[0][0][:12], digits_batches[0][1][:12]
    logits, terms = stage.forward_train(images, labels)
    with torch.no_grad():
        embedding = stage.teacher_embedding(images)
        present = torch.unique(labels)
        posterior = local_posterior(embedding, class_centres(embedding, labels, 5), present, 2.0)
        expected = options.kd_weight * local_kd(logits, posterior, present, 2.0)
    assert terms["local_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    # λ decays from one epoch of the classifier stage to the next (the paper's REFILLED, not REFILLED⁻)
    stage.on_epoch_start(0, 10)
    first = stage.kd_weight
    stage.on_epoch_start(1, 10)
    assert 0 < stage.kd_weight < first == options.kd_weight


# ------------------------------------------------------------------------------------------ embedding before dropout
TINY_MOBILENET = {"width_mult": 0.25}  # torchvision's MobileNetV2: Dropout(0.2) before its classifier


def pooled_trunk(network, images: torch.Tensor) -> torch.Tensor:
    """MobileNetV2's global-average-pooled final features, computed without its head."""
    return F.adaptive_avg_pool2d(network.body.features(images), 1).flatten(1)


@pytest.mark.parametrize("stage_class", [RefilledEmbedding, RKDEmbedding], ids=["refilled", "rkd_ft"])
def test_a_torchvision_students_embedding_is_its_pooled_features_before_dropout(stage_class):
    torch.manual_seed(0)
    teacher = create_model("torchvision:mobilenet_v2", 5, 3, **TINY_MOBILENET).eval()
    student = create_model("torchvision:mobilenet_v2", 5, 3, **TINY_MOBILENET)
    options = get_method("refilled" if stage_class is RefilledEmbedding else "rkd_ft").options()
    stage = stage_class(student, teacher, options, DistillContext(5, None, input_shape=(3, 32, 32)))
    stage.train()  # the student in train mode, as in its embedding stage; the teacher stays in eval mode
    assert student.training and not teacher.training
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        first = stage.student_capture.run(images)[1][0].flatten(1)
        second = stage.student_capture.run(images)[1][0].flatten(1)
        pooled = pooled_trunk(student, images)  # train-mode BatchNorm, the same batch: the same statistics
        teachers = stage.teacher_capture.run(images)[1][0].flatten(1)
    # dropout would zero a fifth of the entries, scale the rest by 1.25 and differ between the two passes
    assert torch.allclose(first, pooled, atol=1e-6) and torch.allclose(second, pooled, atol=1e-6)
    assert torch.allclose(teachers, pooled_trunk(teacher, images), atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "path"),
    [
        ("mobilenet_v2", "body.classifier.0"),  # Sequential(Dropout, Linear)
        ("mobilenet_v3_small", "body.classifier.2"),  # Linear, Hardswish, Dropout, Linear: the hidden layer
        ("googlenet", "body.dropout"),  # avgpool, dropout, fc as attributes of the network
        ("resnet18", "classifier"),  # no dropout: the classifier's input
    ],
)
def test_the_embedding_tap_of_each_torchvision_family_skips_the_dropout_before_its_head(arch, path):
    torch.manual_seed(0)
    model = create_model(f"torchvision:{arch}", 4, 3).eval()
    assert embedding_tap(model).path == path
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        captured = {}
        hook = model.classifier.register_forward_pre_hook(lambda _m, args: captured.update(input=args[0]))
        _, (embedding,) = FeatureCapture(model, [embedding_tap(model)]).run(images)
        hook.remove()
    # in eval mode dropout passes its input through: the tap reads the features the classifier reads
    assert torch.equal(embedding.flatten(1), captured["input"])
