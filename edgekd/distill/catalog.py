"""The catalog of distillation methods: each method's name, options, summary, supported label relations,
and where its code is.

A recipe is loaded and validated, and `edgekd schema` lists every method's options, from this declaration
alone: it imports no torch. A method's code (its Distiller, an nn.Module, and its plan of stages) is
imported from the module an entry names the first time it is needed: `entry.distiller` or `entry.plan(...)`.

Adding a method takes:

1. its file, ``edgekd/distill/methods/<name>.py``: the Distiller marked ``@implements("<name>")``
   (registry.py; it checks on import that the entry below points at that class) and, for a method of more
   than one stage, its plan function returning the Stages;
2. its registry entry: its options class (the recipe's ``distill.<name>:`` block) in options.py, and an
   entry in ``METHODS`` below naming that class, the file and the Distiller (and plan function);
3. a test of its loss terms; tests/test_catalog.py already loads every entry's code and plan, and
   tests/test_ddp_methods.py trains every stage of its plan in two processes against one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekd.distill.options import (
    ATOptions,
    DistProOptions,
    FinetuneOptions,
    FitNetOptions,
    KDOptions,
    OFDOptions,
    RefilledOptions,
    RKDFinetuneOptions,
    RKDOptions,
    ScratchOptions,
    SKDOptions,
    SRMOptions,
    resolved_option,
)
from edgekd.distill.plan import PlanBuilder, Stage, single_stage
from edgekd.schema_base import Section

if TYPE_CHECKING:
    from edgekd.config.train import TrainConfig
    from edgekd.distill.base import Distiller

# How the student's classes relate to the teacher's: the same classes, a subset of them (specialization),
# or none of them (cross-task: REFILLED's setting).
RELATIONS = ("same", "subset", "disjoint")
ANY_RELATION = frozenset(RELATIONS)
# Methods that read the teacher's logits on the student's classes need those classes among the teacher's.
SHARED_CLASSES = frozenset({"same", "subset"})
Relations = frozenset[str] | Callable[[Any], frozenset[str]]


@dataclass(frozen=True)
class MethodEntry:
    """One method: what a recipe and the schema need (name, options, summary, relations) and, by name,
    where its code is (`module`, the Distiller `class_name`, the plan function `plan_name`)."""

    name: str
    options: type[Section]
    summary: str
    module: str
    class_name: str
    # The function of `module` that builds the plan of stages; None: one stage of the Distiller (plan.py).
    plan_name: str | None = None
    # The label relations (teacher classes vs student classes) the method works under, maybe by its options.
    relations: Relations = SHARED_CLASSES
    # The student is the teacher's architecture, initialized from its weights (fine-tuning baselines):
    # such a model ignores the budget, and the report marks it so.
    student_from_teacher: bool = False
    # The method reads the teacher's logits alone, or nothing of it: a teacher given as a file (teacher.file,
    # a .pt2 or .onnx program with no modules to hook or copy) can serve it. Feature, embedding and
    # weight-copying methods need the teacher's module.
    logits_only: bool = False

    @property
    def distiller(self) -> type[Distiller]:
        return self._implementation(self.class_name)

    @property
    def plan_builder(self) -> PlanBuilder | None:
        return None if self.plan_name is None else self._implementation(self.plan_name)

    def plan(self, options: Section, train: TrainConfig) -> list[Stage]:
        builder = self.plan_builder
        if builder is None:
            return single_stage(self.distiller, self.summary)(options, train)
        return builder(options, train)

    def supported_relations(self, options: Section) -> frozenset[str]:
        return self.relations(options) if callable(self.relations) else self.relations

    def _implementation(self, attribute: str) -> Any:
        """`attribute` of the method's module, imported on first use (Python caches the module)."""
        found = getattr(importlib.import_module(self.module), attribute, None)
        if found is None:
            raise ImportError(
                f"distillation method '{self.name}': the catalog names {self.module}.{attribute}, "
                "which does not exist; make catalog.py and the method's file agree"
            )
        return found


def finetune_relations(options: FinetuneOptions) -> frozenset[str]:
    """A fresh head needs nothing of the teacher's classes; the restricted head is made of its rows."""
    return ANY_RELATION if options.head == "fresh" else SHARED_CLASSES


def fitnet_relations(options: FitNetOptions) -> frozenset[str]:
    """A KD term reads the teacher's logits on the student's classes; a hint alone reads only features."""
    return SHARED_CLASSES if resolved_option(options, "kd_alpha") > 0 else ANY_RELATION


_CODE = "edgekd.distill.methods"

METHODS: tuple[MethodEntry, ...] = (
    MethodEntry(
        "scratch",
        ScratchOptions,
        "The student trained from scratch with cross-entropy only.",
        f"{_CODE}.scratch",
        "Scratch",
        relations=ANY_RELATION,
        logits_only=True,
    ),
    MethodEntry(
        "kd",
        KDOptions,
        "Hinton KD: match the teacher's softened logits (temperature, alpha).",
        f"{_CODE}.kd",
        "KD",
        logits_only=True,
    ),
    MethodEntry(
        "finetune",
        FinetuneOptions,
        "The teacher's architecture and weights fine-tuned on the student's data (over budget, reported as "
        "such).",
        f"{_CODE}.finetune",
        "Finetune",
        student_from_teacher=True,
        relations=finetune_relations,
    ),
    MethodEntry(
        "fitnet",
        FitNetOptions,
        "FitNets (Romero 2015): hint stage (regressor, MSE on a middle tap), then KD; or RepDistiller's "
        "single-stage CE + hint.",
        f"{_CODE}.fitnet",
        "FitNetTask",
        plan_name="fitnet_plan",
        relations=fitnet_relations,
    ),
    MethodEntry(
        "at",
        ATOptions,
        "Attention transfer (Zagoruyko 2017): match normalized spatial attention maps at each tap, "
        "weight 1000.",
        f"{_CODE}.at",
        "AT",
        relations=ANY_RELATION,  # feature maps only: the teacher's classes play no part
    ),
    MethodEntry(
        "rkd",
        RKDOptions,
        "Relational KD (Park 2019): distance (25) and angle (50) structure of penultimate embeddings.",
        f"{_CODE}.rkd",
        "RKD",
        relations=ANY_RELATION,  # embeddings only: the teacher's classes play no part
    ),
    MethodEntry(
        "ofd",
        OFDOptions,
        "Overhaul of feature distillation (Heo 2019): pre-ReLU maps, teacher margin, partial L2.",
        f"{_CODE}.ofd",
        "OFD",
        relations=ANY_RELATION,  # feature maps only: the teacher's classes play no part
    ),
    MethodEntry(
        "skd",
        SKDOptions,
        "SKD (paper 001): CE + Overhaul feature distance + Lipschitz spectral-norm term, features only; "
        "works with a class subset.",
        f"{_CODE}.skd",
        "SKD",
        relations=ANY_RELATION,  # feature maps only: the teacher's classes play no part
    ),
    MethodEntry(
        "refilled",
        RefilledOptions,
        "REFILLED (paper 003): triplet-aligned embedding, then a fresh classifier with local KD from the "
        "teacher's class centres; works across disjoint label sets.",
        f"{_CODE}.refilled",
        "RefilledClassifier",
        plan_name="refilled_plan",
        relations=ANY_RELATION,
    ),
    MethodEntry(
        "rkd_ft",
        RKDFinetuneOptions,
        "RKD on the embedding, then a fresh classifier fine-tuned with CE (REFILLED's cross-task baseline).",
        f"{_CODE}.rkd_ft",
        "RKDEmbedding",
        plan_name="rkd_finetune_plan",
        relations=ANY_RELATION,
    ),
    MethodEntry(
        "srm",
        SRMOptions,
        "SRM (paper 004): teacher dictionaries (sparse codes of its feature maps), then the student's taps "
        "learn their pixel and image labels, then KD with a fresh head (CE alone across tasks).",
        f"{_CODE}.srm",
        "SRMTask",
        plan_name="srm_plan",
        relations=ANY_RELATION,  # stages 1-2 read features only; stage 3 drops KD without shared classes
    ),
    MethodEntry(
        "distpro",
        DistProOptions,
        "DistPro (paper 002): search the weights of every teacher-student pathway over training by a "
        "hyper-gradient (bi-level), then replay that process on a fresh student; or its final or equal weights.",
        f"{_CODE}.distpro",
        "DistProReplay",
        plan_name="distpro_plan",
        relations=ANY_RELATION,  # feature maps only: the teacher's classes play no part
    ),
)


def by_name(entries: tuple[MethodEntry, ...]) -> dict[str, MethodEntry]:
    """The entries by name; a name declared twice is an error (the second would hide the first)."""
    found: dict[str, MethodEntry] = {}
    for entry in entries:
        if entry.name in found:
            raise ValueError(f"distillation method '{entry.name}' is declared twice in the catalog")
        found[entry.name] = entry
    return found


CATALOG: dict[str, MethodEntry] = by_name(METHODS)
