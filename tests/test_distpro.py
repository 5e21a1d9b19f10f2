"""DistPro (paper 002): pathways, HCL, the biased softmax, the functional hyper-gradient, process replay; the
paper's defaults (27 pathways, α̃_0 = 1, the per-step clip, the search's step schedule) and a replay seeded as
its equal-weights reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.hypergradient import call, finite_difference_hypergradient, unrolled_step
from edgekd.distill.pathways import (
    PathwayTransform,
    allowed_pairs,
    hcl_loss,
    interpolate_process,
    process_weights,
)


# ------------------------------------------------------------------------------------------- pieces
def test_biased_softmax_against_a_hand_computation():
    logits = torch.tensor([0.0, 1.0, 2.0])
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0, 1.0]))  # the extra logit g = 1
    torch.testing.assert_close(process_weights(logits, 1.0), e[:3] / e.sum())
    assert process_weights(logits, 1.0).sum() < 1  # the bias takes a share: all weights can shrink
    torch.testing.assert_close(process_weights(logits, None), F.softmax(logits, 0))


def test_hcl_uses_the_levels_smaller_than_the_map_with_normalised_weights():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    pooled = [
        F.mse_loss(F.adaptive_avg_pool2d(student, s), F.adaptive_avg_pool2d(teacher, s)) for s in (4, 2, 1)
    ]
    expected = (F.mse_loss(student, teacher) + 0.5 * pooled[0] + 0.25 * pooled[1] + 0.125 * pooled[2]) / 1.875
    torch.testing.assert_close(hcl_loss(student, teacher), expected)
    small_s, small_t = student[..., :2, :2], teacher[..., :2, :2]  # 2x2: only the 1x1 level is smaller
    expected_small = (
        F.mse_loss(small_s, small_t) + 0.125 * F.mse_loss(small_s.mean((2, 3)), small_t.mean((2, 3)))
    ) / 1.125
    torch.testing.assert_close(hcl_loss(small_s, small_t), expected_small)


def test_transform_maps_a_student_tap_to_the_teachers_shape():
    transform = PathwayTransform(student_channels=8, teacher_channels=32, teacher_size=(8, 8))
    assert transform(torch.randn(2, 8, 4, 4)).shape == (2, 32, 8, 8)
    assert transform.enter[0].out_channels == 8  # mid = min(512, C_t, C_s)


def test_allowed_pairs_deeper_or_same():
    assert allowed_pairs(3, 3, "deeper_or_same") == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert len(allowed_pairs(2, 3, "all")) == 6


def test_the_interpolated_process_hits_the_recorded_values_at_the_recorded_points():
    steps = [0, 10, 20, 40]
    values = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    replay = interpolate_process(steps, values, total_steps=80, searched_steps=40)
    for step, row in zip(steps, values, strict=True):
        torch.testing.assert_close(replay(2 * step), row)  # twice as long: search step s is replay step 2s
    torch.testing.assert_close(replay(10), torch.tensor([0.2, 0.8]))  # halfway between steps 0 and 10
    torch.testing.assert_close(replay(60), torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(replay(1000), values[-1])


# ------------------------------------------------------------------------------------------- hyper-gradient
class Tiny(nn.Module):
    """CE on a two-layer net plus α-weighted matches of its hidden units to two targets."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, y, targets=None, alpha=None):
        h = torch.tanh(self.norm(self.hidden(x)))
        ce = F.cross_entropy(self.out(h), y)
        if alpha is None:
            return ce
        weights = process_weights(alpha, 1.0)
        terms = [(h[:, :3] - targets[0]).square().mean(), (h[:, 3:] - targets[1]).square().mean()]
        return ce + weights[0] * terms[0] + weights[1] * terms[1]


def tiny_problem(optimizer_kind: str):
    torch.manual_seed(0)
    model = Tiny().double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    xv, yv = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    targets = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64))
    if optimizer_kind == "nesterov":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # one real step first, so the momentum buffers are not empty
    model(x, y, targets, alpha=torch.zeros(2, dtype=torch.float64)).backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer, (x, y, targets), (xv, yv), torch.tensor([0.3, -0.2], dtype=torch.float64)


@pytest.mark.parametrize("optimizer_kind", ["plain", "nesterov"])
def test_finite_difference_hypergradient_agrees_with_double_backpropagation(optimizer_kind):
    model, optimizer, train_args, val_args, alpha = tiny_problem(optimizer_kind)
    trained = [name for name, _ in model.named_parameters()]
    approx = finite_difference_hypergradient(model, trained, train_args, val_args, alpha, optimizer)
    # exact: differentiate L_val(w'(α)) through the unrolled step itself (create_graph)
    live = dict(model.named_parameters())
    weights = {name: p.detach().clone().requires_grad_(True) for name, p in live.items()}
    probe = alpha.clone().requires_grad_(True)
    grads = torch.autograd.grad(
        call(model, weights, *train_args, alpha=probe), list(weights.values()), create_graph=True
    )
    stepped, _ = unrolled_step(
        {n: w.detach() for n, w in weights.items()}, dict(zip(trained, grads, strict=True)), live, optimizer
    )
    exact = torch.autograd.grad(call(model, stepped, *val_args, alpha=None), probe)[0]
    relative = (approx.alpha_grad - exact).norm() / exact.norm()
    assert exact.norm() > 0 and relative < 1e-3, (approx.alpha_grad, exact)


def test_a_search_step_leaves_the_live_parameters_and_statistics_bit_identical():
    model, optimizer, train_args, val_args, alpha = tiny_problem("nesterov")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    buffers = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    model.train()
    finite_difference_hypergradient(
        model, [n for n, _ in model.named_parameters()], train_args, val_args, alpha, optimizer
    )
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm running stats included
    assert all(torch.equal(buffers[id(p)], optimizer.state[p]["momentum_buffer"]) for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------- the method
DIGITS_SHAPE = (1, 8, 8)  # `digits` and `teacher` (a briefly trained resnet20) come from conftest.py


def distpro_stage(objective, teacher, student=None, **options):
    from edgekd.distill import DistillContext, get_method
    from edgekd.models import create_model

    torch.manual_seed(1)
    student = student or create_model("resnet8", 10, 1, width=8)
    context = DistillContext(10, tuple(range(10)), input_shape=DIGITS_SHAPE)
    return objective(student, teacher, get_method("distpro").options(**options), context)


class HeldOut:
    """The part of a DataBundle the search reads: its search-val images, in a fixed order."""

    def __init__(self, images, labels):
        self.val = list(zip(images.split(16), labels.split(16), strict=True))
        self.train = images

    def eval_loader(self, split):
        assert split == "val"
        return self.val


# The small search space of the authors' release (j ≥ i, one transform: 6 pathways), for the tests whose
# subject is not the search space.
SMALL = {"pairs": "deeper_or_same", "variants": 1}


def test_a_search_step_moves_only_alpha(teacher, digits):
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher, **SMALL)
    assert len(search.pathways) == 6 and search.pathway_names()[1] == "layer1<-layer2#0"
    search.prepare_stage(HeldOut(digits[0][100:132], digits[1][100:132]), torch.device("cpu"))
    search.on_epoch_start(0, 1)
    optimizer = torch.optim.SGD(search.trainable_parameters(), lr=0.05, momentum=0.9, nesterov=True)
    search.train()
    images, labels = digits[0][:32], digits[1][:32]
    search.forward_train(images, labels)[1]["ce"].backward()  # one real step: momentum buffers exist
    optimizer.step()
    optimizer.zero_grad()
    before = {k: v.clone() for k, v in search.state_dict().items() if k != "_extra_state"}
    alpha_before = search.alpha().clone()
    search.before_step(images, labels, optimizer)
    after = search.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["alpha_logits"], changed  # the student, transforms and BN statistics are untouched
    assert not torch.equal(alpha_before, search.alpha())
    assert search.recorded_steps == [0] and search.steps_done == 1


def test_the_search_state_survives_a_checkpoint(teacher, digits):
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher, **SMALL)
    search.prepare_stage(HeldOut(digits[0][100:132], digits[1][100:132]), torch.device("cpu"))
    optimizer = torch.optim.SGD(search.trainable_parameters(), lr=0.05)
    search.before_step(digits[0][:32], digits[1][:32], optimizer)
    search.before_step(digits[0][32:64], digits[1][32:64], optimizer)
    restored = distpro_stage(DistProSearch, teacher, **SMALL)
    restored.load_state_dict(search.state_dict())
    assert restored.recorded_steps == search.recorded_steps == [0, 1]
    assert torch.equal(restored.alpha(), search.alpha())
    assert restored.alpha_optimizer.state_dict()["state"][0]["step"] == 2


def test_replay_follows_the_process_and_refuses_other_pathways(teacher):
    from edgekd.distill.methods.distpro import PROCESS_FORMAT, DistProReplay
    from edgekd.errors import EdgekdError

    replay = distpro_stage(DistProReplay, teacher, **SMALL, drop_below=None)
    values = torch.softmax(torch.randn(3, 6), 1)
    process = {
        "format": PROCESS_FORMAT,
        "pathways": replay.pathway_names(),
        "steps": [0, 5, 10],
        "alpha": values,
        "logits": torch.tensor([[0.0] * 6, [0.2, 0.6, 0.0, 0.0, 0.0, 0.0], [0.1, 0.7, 0.0, 0.0, 0.0, 0.0]]),
        "searched_steps": 10,
    }
    replay.use_artifact("process", process)
    for step, row in ((0, values[0]), (50, values[1]), (100, values[2])):  # a run 10x the search
        replay.on_step_start(step, 100)
        torch.testing.assert_close(replay.current, row)
    dropping = distpro_stage(DistProReplay, teacher, **SMALL, drop_below=0.5, drop="whole_run")
    dropping.use_artifact("process", process)
    assert dropping.active == [False, True, False, False, False, False]
    assert len(dropping.trainable_parameters()) < len(replay.trainable_parameters())
    other = distpro_stage(DistProReplay, teacher, pairs="all", variants=1)
    with pytest.raises(EdgekdError) as error:
        other.use_artifact("process", process)
    message = str(error.value)
    assert "\n" not in message and "searched over 6 pathways" in message and "this recipe has 9" in message


def test_plans_of_the_three_weightings():
    from edgekd.config.train import TrainConfig
    from edgekd.distill import get_method
    from edgekd.distill.methods.distpro import distpro_plan

    options = get_method("distpro").options
    search, replay = distpro_plan(options(), TrainConfig(epochs=60))
    assert (search.view, search.epochs, search.select) == ("holdout", 10, "last")
    assert replay.fresh_student and replay.epochs == 60 and replay.consumes[0].name == "process"
    (equal,) = distpro_plan(options(weights="equal"), TrainConfig(epochs=60))
    assert not equal.consumes and not equal.fresh_student
    assert [s.name for s in distpro_plan(options(weights="final"), TrainConfig(epochs=60))] == [
        "search",
        "replay",
    ]


# ------------------------------------------------------------------------------------------- the paper's defaults
def test_by_default_every_teacher_map_pairs_with_every_student_map_through_three_blocks(teacher):
    """Paper §4.1: "the size of the pathways is 27, as we use 3 transform blocks and 9 connections"."""
    from edgekd.distill.methods.distpro import DistProReplay

    replay = distpro_stage(DistProReplay, teacher)
    names = replay.pathway_names()
    assert len(names) == 27 and len(set(names)) == 27
    assert "layer3<-layer1#2" in names  # a teacher map deeper than the student's: outside j ≥ i
    assert len(distpro_stage(DistProReplay, teacher, pairs="deeper_or_same").pathways) == 18
    # a connection's three blocks: the paper's one architecture, each initialised from its own draw
    first, second = replay.transforms[0], replay.transforms[1]
    assert replay.ends[0] == replay.ends[1]
    assert [p.shape for p in first.parameters()] == [p.shape for p in second.parameters()]
    assert not torch.equal(first.enter[0].weight, second.enter[0].weight)


def test_the_search_starts_every_pathway_at_alpha_tilde_one_above_the_clip(teacher):
    """Paper §3.3: "we set an initial value α_0 = 1": the unnormalised weight (its normalised form cannot be 1:
    the biased softmax sums below 1); with g = 1 each pathway starts level with the bias."""
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher, **SMALL)
    assert torch.equal(search.alpha_logits.detach(), torch.ones(6))
    torch.testing.assert_close(search.alpha(), torch.full((6,), 1 / 7))
    search.clip(search.alpha_logits.detach())
    assert all(search.computed)  # τ = 0.5 < 1: the search starts with every pathway computed


def search_batch(digits):
    return digits[0][:32], digits[1][:32]


def prepared_search(teacher, digits, **options):
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher, **SMALL, **options)
    search.prepare_stage(HeldOut(digits[0][100:132], digits[1][100:132]), torch.device("cpu"))
    search.on_epoch_start(0, 1)
    search.train()
    return search, torch.optim.SGD(search.trainable_parameters(), lr=0.05, momentum=0.9)


def test_the_search_leaves_a_pathway_out_of_each_step_its_alpha_tilde_is_at_most_tau(teacher, digits):
    """Paper §3.4: "at step t ... drop corresponding computation when α̃_t ≤ τ" (τ = 0.5)."""
    search, optimizer = prepared_search(teacher, digits)
    with torch.no_grad():
        search.alpha_logits[0] = 0.2  # one Adam step (lr 0.05) cannot lift it above τ
    images, labels = search_batch(digits)
    search.before_step(images, labels, optimizer)
    assert search.alpha_logits[0] != 0.2  # still searched: through the shared normaliser, it may come back
    _, terms = search.forward_train(images, labels)
    sum(terms.values()).backward()
    assert search.computed == [False, True, True, True, True, True]
    assert all(p.grad is None for p in search.transforms[0].parameters())  # not computed, not stepped
    assert all(p.grad is not None for p in search.transforms[1].parameters())
    with torch.no_grad():  # the others keep their weights: the left-out term is dropped, not redistributed
        _, student_maps = search.student_capture.run(images)
        teacher_maps = search.teacher_maps(images)
        alpha = search.alpha()
        kept = [
            alpha[p] * hcl_loss(search.transforms[p](student_maps[j]), teacher_maps[i])
            for p, (i, j) in enumerate(search.ends)
            if p != 0
        ]
    torch.testing.assert_close(terms["pathways"].detach(), sum(kept))


def test_whole_run_dropping_computes_every_pathway_in_the_search(teacher, digits):
    search, optimizer = prepared_search(teacher, digits, drop="whole_run")
    with torch.no_grad():
        search.alpha_logits[0] = 0.2
    images, labels = search_batch(digits)
    search.before_step(images, labels, optimizer)
    sum(search.forward_train(images, labels)[1].values()).backward()
    assert all(p.grad is not None for p in search.transforms[0].parameters())


def test_the_replay_computes_a_pathway_at_the_steps_its_replayed_alpha_tilde_exceeds_tau(teacher, digits):
    from edgekd.distill.methods.distpro import PROCESS_FORMAT, DistProReplay

    replay = distpro_stage(DistProReplay, teacher, **SMALL)
    logits = torch.ones(2, 6)
    logits[0, 0] = 0.0  # pathway 0: α̃ rises from 0 to 1 over the search, crossing τ halfway
    logits[:, 5] = 0.4  # pathway 5: never above τ
    process = {
        "format": PROCESS_FORMAT,
        "pathways": replay.pathway_names(),
        "steps": [0, 10],
        "alpha": process_weights(logits, 1.0),
        "logits": logits,
        "searched_steps": 10,
    }
    replay.use_artifact("process", process)
    trained = {id(p) for p in replay.trainable_parameters()}
    assert not any(id(p) in trained for p in replay.transforms[5].parameters())  # never computed: not trained
    assert all(id(p) in trained for p in replay.transforms[0].parameters())
    assert replay.unused_parameters  # under DDP: some trained transforms rest in some steps
    replay.train()
    images, labels = search_batch(digits)
    # a replay of 100 steps reads search step t/10: pathway 0's α̃ is t/100, above τ from step 51 on
    for step, computed in ((0, False), (40, False), (50, False), (60, True), (99, True)):
        replay.on_step_start(step, 100)
        replay.zero_grad(set_to_none=True)
        sum(replay.forward_train(images, labels)[1].values()).backward()
        assert all((p.grad is not None) == computed for p in replay.transforms[0].parameters()), step
        assert all(p.grad is not None for p in replay.transforms[1].parameters())


def test_the_search_steps_its_lr_down_at_each_quarter_as_the_paper():
    """Paper §4.1: 40 search epochs, the student's lr ×0.1 at epochs 10, 20 and 30."""
    from edgekd.config.train import TrainConfig, stage_train_config
    from edgekd.distill import get_method
    from edgekd.distill.methods.distpro import distpro_plan, search_schedule
    from edgekd.train.optim import lr_multiplier

    base = TrainConfig(epochs=240, schedule={"name": "multistep", "milestones": [150, 180, 210]})
    search, replay = distpro_plan(get_method("distpro").options(), base)
    searched = search.train_config(base)
    factors = [lr_multiplier(epoch, searched.epochs, searched.schedule) for epoch in range(40)]
    assert factors == pytest.approx([1.0] * 10 + [0.1] * 10 + [0.01] * 10 + [0.001] * 10)
    assert replay.train_config(base).schedule == base.schedule  # the replay keeps the recipe's
    # a recipe's distill.stages still changes the search's schedule
    assert stage_train_config(searched, {"schedule": {"name": "cosine"}}).schedule.name == "cosine"
    assert search_schedule(10)["milestones"] == [2, 5, 7] and search_schedule(1)["milestones"] == []


@pytest.mark.parametrize("recipe", ["cifar100_distpro.yaml", "cifar100_distpro_resnet.yaml"])
def test_the_cifar_recipes_search_and_train_as_the_paper(recipe, tmp_path):
    """Batch 128 (§4.1, all models) and the search's step schedule, for the searched process and α_T alike."""
    from pathlib import Path

    from edgekd.config.loading import load_recipe
    from edgekd.config.train import stage_train_config
    from edgekd.distill.registry import resolve_method

    path = Path(__file__).resolve().parents[1] / "recipes" / recipe
    loaded = load_recipe(path, [f"data.root={tmp_path}"])
    assert loaded.data.batch_size == 128
    for method in ("distpro", "distpro_final"):
        resolved = resolve_method(loaded.distill, method)
        search = resolved.entry.plan(resolved.options, loaded.train)[0]
        changes = loaded.distill.stages.get(method, {}).get("search")
        searched = stage_train_config(search.train_config(loaded.train), changes)
        assert (searched.epochs, searched.schedule.name) == (40, "multistep"), method
        assert (searched.schedule.milestones, searched.schedule.gamma) == ([10, 20, 30], 0.1), method
        assert (resolved.options.pairs, resolved.options.variants) == ("all", 3), method


# ------------------------------------------------------------------------------------------- fairness
def trained_by_plan(options, teacher, folder):
    """A student trained through DistPro's plan for `options` on 100 digits, from the seeded draw every
    method's student starts from, as the build trains it (run_plan)."""
    from edgekd.config.data import DataConfig
    from edgekd.config.train import TrainConfig
    from edgekd.data import build_data
    from edgekd.distill import DistillContext
    from edgekd.distill.methods.distpro import distpro_plan
    from edgekd.layout import MethodFolder
    from edgekd.models import create_model
    from edgekd.train.stages import StageInputs, run_plan

    data = build_data(DataConfig(per_class=10), subset=True, seed=0)
    train = TrainConfig(epochs=1, optimizer={"lr": 0.1})
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1, width=4)
    result = run_plan(
        distpro_plan(options, train),
        student,
        teacher,
        options,
        DistillContext(10, tuple(range(10)), input_shape=DIGITS_SHAPE),
        StageInputs(data, train),
        seed=0,
        folder=MethodFolder(folder),
        device=torch.device("cpu"),
        label="distpro",
        resume=False,
    )
    return result.student.state_dict(), MethodFolder(folder)


def test_a_replay_and_its_equal_weights_reference_differ_in_the_weights_alone(teacher, tmp_path):
    """A search whose α cannot move (α's lr 1e-30: α̃ stays 1, a plain softmax gives 1/4 each) replays the
    equal weights 1/4 exactly: the replay must then train the student bit for bit as `weights: equal` does,
    so it saw the same batches and augmentation and started from the same student and transforms, whatever
    the search drew from the random state before it."""
    from edgekd.distill import get_method
    from edgekd.models import create_model

    options = get_method("distpro").options
    space = {"teacher_taps": [0, 1], "student_taps": [0, 1], "pairs": "all", "variants": 1}  # 1/4: exact
    searched = options(**space, bias=None, alpha_lr=1e-30, search_epochs=1)
    replayed, folder = trained_by_plan(searched, teacher, tmp_path / "distpro")
    process = torch.load(folder.stage("search").artifact("process.pt"), weights_only=True)
    assert torch.equal(process["alpha"], torch.full_like(process["alpha"], 0.25))  # the precondition
    reference, _ = trained_by_plan(options(**space, weights="equal"), teacher, tmp_path / "distpro_equal")
    torch.manual_seed(0)
    initial = create_model("resnet8", 10, 1, width=4).state_dict()
    assert not torch.equal(replayed["conv1.weight"], initial["conv1.weight"])  # it trained
    different = [name for name in reference if not torch.equal(replayed[name], reference[name])]
    assert not different, different
