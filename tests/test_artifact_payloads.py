"""Stage artifacts loaded from another run (`distill.artifacts`): each kind's declared payload (SRM's
dictionaries, DistPro's process, REFILLED's embedding weights) is checked when the recipe is, so a
malformed file is one line naming it and what is wrong, exit code 2, and no run folder: never a traceback,
or a NaN loss after the teacher has trained.

Every file is a real torch.save file of a payload the producing code wrote for the tiny recipe's networks
(a resnet8 teacher, the 20k-parameter student: resnet8 of width 8, on 1x8x8 digits), then broken in one way.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from edgekd.distill import DistillContext, get_method
from edgekd.distill.base import Distiller
from edgekd.distill.embedding import EMBEDDING_WEIGHTS
from edgekd.distill.methods.distpro import PROCESS_FORMAT, DistProReplay
from edgekd.distill.methods.srm import SRMDictionaries
from edgekd.distill.plan import Stage
from edgekd.models import create_model
from edgekd.records import StageArtifact
from edgekd.train.stages import hand_on_student

TRAIN = {"epochs": 3, "optimizer": {"lr": 0.1}}
METHODS = {
    "srm": {"method": "srm", "baselines": [], "srm": {"sparsity": 0.1}},
    "distpro": {"method": "distpro", "baselines": [], "distpro": {"search_epochs": 1}},
    "refilled": {"method": "refilled", "baselines": [], "refilled": {"embedding_epochs": 1}},
}
ARTIFACT_OF = {"srm": "dictionaries", "distpro": "process", "refilled": "embedding"}


def tiny_networks():
    torch.manual_seed(0)
    return create_model("resnet8", 10, 1), create_model("resnet8", 10, 1, width=8)


@functools.cache  # each maker runs once; `changed` breaks a deep copy
def srm_dictionaries() -> dict:
    teacher, student = tiny_networks()
    options = get_method("srm").options(sparsity=0.1)
    context = DistillContext(10, tuple(range(10)), input_shape=(1, 8, 8))
    return SRMDictionaries(student, teacher, options, context).artifact("dictionaries")


@functools.cache
def distpro_process() -> dict:
    """A process as DistProSearch.artifact writes it, over the pathways the tiny recipe has."""
    teacher, student = tiny_networks()
    context = DistillContext(10, tuple(range(10)), input_shape=(1, 8, 8))
    pathways = DistProReplay(student, teacher, get_method("distpro").options(), context).pathway_names()
    logits = torch.randn(3, len(pathways))
    return {
        "format": PROCESS_FORMAT,
        "pathways": pathways,
        "bias": 1.0,
        "searched_steps": 10,
        "steps": [0, 5, 10],
        "alpha": torch.softmax(logits, 1),
        "logits": logits,
        "searched_on": {"teacher": "ResNet", "student": "ResNet"},
    }


@functools.cache
def refilled_embedding() -> dict:
    return tiny_networks()[1].state_dict()


VALID = {"srm": srm_dictionaries, "distpro": distpro_process, "refilled": refilled_embedding}


class RunsCode:
    """Unpickling this calls print: harmless, but code all the same (what weights_only refuses)."""

    def __reduce__(self):
        return (print, ("this ran",))


def build_with(cli, write_recipe, tmp_path: Path, method: str, payload) -> str:
    path = tmp_path / f"{ARTIFACT_OF[method]}.pt"
    torch.save(payload, path)
    distill = {**METHODS[method], "artifacts": {method: {ARTIFACT_OF[method]: str(path)}}}
    result = cli("build", write_recipe(distill=distill, train=TRAIN))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: distill.artifacts.{method}.{ARTIFACT_OF[method]}")
    assert result.output.count("\n") == 1 and str(path) in result.output, result.output
    assert not (tmp_path / "runs").exists()
    return result.output


def changed(method: str, change: Callable[[dict], None]) -> dict:
    payload = copy.deepcopy(VALID[method]())
    change(payload)
    return payload


def tap(index: int, key: str, value):
    return lambda p: p["taps"][index].__setitem__(key, value)


def nan_at(tensor: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = value
    return tensor


MALFORMED = {
    # SRM's dictionaries
    "srm: no taps": ("srm", lambda p: p.pop("taps"), ["taps is missing"]),
    "srm: a tap without bias": ("srm", lambda p: p["taps"][0].pop("bias"), ["taps[0].bias is missing"]),
    "srm: mu as text": ("srm", lambda p: p.update(atoms_per_channel="2"), ["atoms_per_channel is '2'"]),
    "srm: k as text": ("srm", tap(1, "k", "6"), ["taps[1].k is '6'", "an integer"]),
    "srm: k above the atoms": ("srm", tap(0, "k", 33), ["taps[0].k is 33", "<= atoms (32)"]),
    "srm: teacher not a digest": ("srm", lambda p: p.update(teacher=7), ["teacher is 7", "hexadecimal"]),
    "srm: too few taps": ("srm", lambda p: p.update(taps=p["taps"][:2]), ["2 teacher taps", "the 3 this"]),
    "srm: too many taps": (
        "srm",
        lambda p: p["taps"].append(p["taps"][0]),
        ["4 teacher taps (layer1, layer2"],
    ),
    "srm: bias of three": ("srm", tap(0, "bias", torch.zeros(3)), ["taps[0].bias", "shape (3,)", "shape ()"]),
    "srm: atoms as lists": (
        "srm",
        lambda p: p["taps"][0].update(dictionary=p["taps"][0]["dictionary"].tolist()),
        ["taps[0].dictionary is a list", "floating-point tensor of shape (channels 16, atoms 32)"],
    ),
    "srm: NaN atoms": (
        "srm",
        lambda p: p["taps"][1].update(dictionary=nan_at(p["taps"][1]["dictionary"])),
        ["taps[1].dictionary", "NaN"],
    ),
    "srm: int64 atoms": (
        "srm",
        lambda p: p["taps"][0].update(dictionary=p["taps"][0]["dictionary"].long()),
        ["taps[0].dictionary is a tensor of int64"],
    ),
    "srm: atoms disagree with their count": (
        "srm",
        tap(0, "dictionary", torch.zeros(16, 31)),
        ["taps[0].dictionary", "shape (16, 31)", "(channels 16, atoms 32)"],
    ),
    "srm: atoms for other channels": (
        "srm",
        lambda p: p["taps"][2].update(atoms=100, dictionary=torch.zeros(64, 100)),
        ["taps[2] (layer3) is 64 channels, 100 atoms, k=12", "allowed: 64 channels, 128 atoms, k=12"],
    ),
    "srm: NaN mu": ("srm", lambda p: p.update(atoms_per_channel=float("nan")), ["atoms_per_channel is nan"]),
    "srm: NaN lambda": ("srm", lambda p: p.update(sparsity=float("nan")), ["sparsity is nan"]),
    "srm: other mu": (
        "srm",
        lambda p: p.update(atoms_per_channel=3.0),
        ["learnt with atoms_per_channel 3.0", "distill.srm.atoms_per_channel is 2.0"],
    ),
    "srm: other format": ("srm", lambda p: p.update(format="other"), ["not an SRM dictionaries file"]),
    # DistPro's process
    "distpro: no alpha": ("distpro", lambda p: p.pop("alpha"), ["alpha is missing"]),
    "distpro: no steps": ("distpro", lambda p: p.pop("steps"), ["steps is missing"]),
    "distpro: alpha of the wrong shape": (
        "distpro",
        lambda p: p.update(alpha=p["alpha"][:, :5]),
        ["alpha is a tensor of float32, shape (3, 5)", "shape (steps 3, pathways 27)"],
    ),
    "distpro: alpha as a list": (
        "distpro",
        lambda p: p.update(alpha=p["alpha"].tolist()),
        ["alpha is a list"],
    ),
    "distpro: NaN alpha": ("distpro", lambda p: p.update(alpha=nan_at(p["alpha"])), ["alpha", "NaN"]),
    "distpro: alpha outside [0, 1]": (
        "distpro",
        lambda p: p.update(alpha=p["alpha"] + 1),
        ["values in [0, 1]"],
    ),
    "distpro: int64 logits": ("distpro", lambda p: p.update(logits=p["logits"].long()), ["logits", "int64"]),
    "distpro: steps reversed": (
        "distpro",
        lambda p: p.update(steps=[10, 5, 0]),
        ["steps is [10, 5, 0], not strictly increasing"],
    ),
    "distpro: a step after the search": ("distpro", lambda p: p.update(steps=[0, 5, 20]), ["steps[2] is 20"]),
    "distpro: no step searched": ("distpro", lambda p: p.update(searched_steps=0), ["searched_steps is 0"]),
    "distpro: negative steps searched": (
        "distpro",
        lambda p: p.update(searched_steps=-4),
        ["searched_steps is -4", "an integer >= 1"],
    ),
    "distpro: NaN bias": ("distpro", lambda p: p.update(bias=float("nan")), ["bias is nan"]),
    "distpro: other pathways": (
        "distpro",
        lambda p: p.update(pathways=[name.replace("#", "#1") for name in p["pathways"]]),
        ["searched over 27 pathways", "must match by name"],
    ),
    # REFILLED's embedding (the student's weights)
    "refilled: NaN weights": (
        "refilled",
        lambda p: p.update({"conv1.weight": nan_at(p["conv1.weight"])}),
        ["conv1.weight holds NaN or infinite values"],
    ),
    "refilled: infinite weights": (
        "refilled",
        lambda p: p.update({"classifier.bias": nan_at(p["classifier.bias"], float("inf"))}),
        ["classifier.bias holds NaN or infinite values"],
    ),
    "refilled: int64 weights": (
        "refilled",
        lambda p: p.update({"conv1.weight": p["conv1.weight"].long()}),
        ["conv1.weight is int64 where the architecture has float32"],
    ),
    "refilled: complex weights": (
        "refilled",
        lambda p: p.update({"conv1.weight": p["conv1.weight"].to(torch.complex64)}),
        ["conv1.weight is complex64"],
    ),
}


@pytest.mark.parametrize(("method", "change", "words"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_artifact_is_one_line_naming_the_file_before_anything_is_written(
    cli, write_recipe, tmp_path, method, change, words
):
    output = build_with(cli, write_recipe, tmp_path, method, changed(method, change))
    assert all(word in output for word in words), output


@pytest.mark.parametrize("method", list(METHODS))
def test_a_pickle_holding_code_is_refused_in_edgekds_own_words(cli, write_recipe, tmp_path, method):
    payload = {"format": "whatever", "payload": RunsCode()} if method != "refilled" else {"x": RunsCode()}
    output = build_with(cli, write_recipe, tmp_path, method, payload)
    assert "holds Python objects besides tensors" in output and "refused" in output
    assert "weights_only" not in output and "will likely succeed" not in output


@pytest.mark.parametrize("method", list(METHODS))
def test_the_payloads_the_producing_code_writes_pass(cli, write_recipe, tmp_path, method):
    """The control for the cases above: each unbroken payload passes the same checks."""
    path = tmp_path / "artifact.pt"
    torch.save(VALID[method](), path)
    distill = {**METHODS[method], "artifacts": {method: {ARTIFACT_OF[method]: str(path)}}}
    result = cli("validate", write_recipe(distill=distill, train=TRAIN))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "wrap",
    [lambda s: {"state_dict": s}, lambda s: {f"module.{k}": v for k, v in s.items()}],
    ids=["state_dict wrapper", "module. keys"],
)
def test_student_weights_the_check_accepts_load_the_same_way_in_the_stage(cli, write_recipe, tmp_path, wrap):
    """A wrapped or DataParallel-prefixed embedding passes the recipe check, so the consuming stage must
    read it the same way (it used to hand the raw file to load_state_dict: a traceback)."""
    weights = refilled_embedding()
    path = tmp_path / "embedding.pt"
    torch.save(wrap(weights), path)
    distill = {**METHODS["refilled"], "artifacts": {"refilled": {"embedding": str(path)}}}
    assert cli("validate", write_recipe(distill=distill, train=TRAIN)).exit_code == 0
    consumer = Stage("classifier", Distiller, "fresh head", consumes=(EMBEDDING_WEIGHTS,))
    student = create_model("resnet8", 10, 1, width=8)
    record = StageArtifact(name="embedding", path=str(path), sha256="", origin="loaded")
    hand_on_student(consumer, student, [record])
    assert all(torch.equal(student.state_dict()[k], v) for k, v in weights.items())


def test_dictionaries_of_another_teacher_are_refused_up_front_when_the_teacher_is_a_checkpoint(
    cli, write_recipe, tmp_path
):
    """A teacher loaded from a checkpoint is known before anything is written: the dictionaries' teacher
    fingerprint is checked then, not when the run folder already holds the teacher's evaluation."""
    learnt_on = tmp_path / "teacher.pt"
    torch.save(tiny_networks()[0].state_dict(), learnt_on)  # the teacher srm_dictionaries() is learnt on
    torch.manual_seed(1)
    other = tmp_path / "other_teacher.pt"
    torch.save(create_model("resnet8", 10, 1).state_dict(), other)
    dictionaries = tmp_path / "dictionaries.pt"
    torch.save(srm_dictionaries(), dictionaries)
    distill = {**METHODS["srm"], "artifacts": {"srm": {"dictionaries": str(dictionaries)}}}

    def run(command: str, checkpoint: Path):
        teacher = {"model": "resnet8", "checkpoint": str(checkpoint)}
        return cli(command, write_recipe(distill=distill, train=TRAIN, teacher=teacher))

    assert run("validate", learnt_on).exit_code == 0
    refused = run("build", other)
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    assert "learnt on another teacher" in refused.output and str(dictionaries) in refused.output
    assert not (tmp_path / "runs").exists()
