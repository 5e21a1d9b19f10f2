"""Registry of distillation methods: a method is one file that registers its Distiller and its options."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator

from edgekd.distill.plan import PlanBuilder, Stage, single_stage
from edgekd.errors import EdgekdError
from edgekd.schema_base import Section, lower_first, shown_value

if TYPE_CHECKING:
    from edgekd.distill.base import Distiller
    from edgekd.recipe import TrainConfig


# How the student's classes relate to the teacher's: the same classes, a subset of them (specialization),
# or none of them (cross-task: REFILLED's setting).
RELATIONS = ("same", "subset", "disjoint")
ANY_RELATION = frozenset(RELATIONS)
# Methods that read the teacher's logits on the student's classes need those classes among the teacher's.
SHARED_CLASSES = frozenset({"same", "subset"})
Relations = frozenset[str] | Callable[[Any], frozenset[str]]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    distiller: type[Distiller]
    options: type[Section]
    summary: str
    # The student is the teacher's architecture, initialized from its weights (fine-tuning baselines):
    # such a model ignores the budget, and the report marks it so.
    student_from_teacher: bool = False
    # The plan of stages; None: one stage of `distiller` (see plan.py).
    plan_builder: PlanBuilder | None = None
    # The label relations (teacher classes vs student classes) the method works under, maybe by its options.
    relations: Relations = SHARED_CLASSES

    def plan(self, options: Section, train: TrainConfig) -> list[Stage]:
        if self.plan_builder is None:
            return single_stage(self.distiller, self.summary)(options, train)
        return self.plan_builder(options, train)

    def supported_relations(self, options: Section) -> frozenset[str]:
        return self.relations(options) if callable(self.relations) else self.relations


_METHODS: dict[str, MethodEntry] = {}


def register_method(
    name: str,
    options: type[Section],
    summary: str,
    *,
    student_from_teacher: bool = False,
    plan: PlanBuilder | None = None,
    relations: Relations = SHARED_CLASSES,
):
    """Class decorator: make a Distiller available to recipes as `distill.method: <name>`.

    `plan` builds the method's stages from its options (default: the decorated Distiller, one stage);
    `relations` are the teacher/student label relations it supports (a set, or a function of its options).
    """

    def register(cls: type[Distiller]) -> type[Distiller]:
        if name in _METHODS:
            raise ValueError(f"distillation method '{name}' is registered twice")
        _METHODS[name] = MethodEntry(name, cls, options, summary, student_from_teacher, plan, relations)
        return cls

    return register


def _register_all() -> None:
    import edgekd.distill.methods  # noqa: F401  (each method module registers itself on import)


def method_names() -> list[str]:
    _register_all()
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    _register_all()
    if name not in _METHODS:
        raise EdgekdError(f"distill.method: unknown method '{name}' (available: {', '.join(method_names())})")
    return _METHODS[name]


def distill_section_model() -> type[Section]:
    """Build the recipe's `distill:` section: the method, its baselines, and an options block per method."""
    import edgekd.distill.methods  # noqa: F401  (registers every method)

    option_fields: dict[str, Any] = {
        name: (entry.options, Field(default_factory=entry.options, description=entry.summary))
        for name, entry in sorted(_METHODS.items())
    }

    def check_names(section: Any) -> Any:
        check_variants(section)
        names = [section.method, *section.baselines]
        known = [*method_names(), *sorted(section.variants)]
        for where, name in zip(
            ["method", *(f"baselines.{i}" for i in range(len(names) - 1))], names, strict=True
        ):
            if name not in known:
                raise ValueError(f"{where}: unknown method '{name}' (available: {', '.join(known)})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"baselines: method '{repeated[0]}' is named twice in method/baselines")
        return section

    return create_model(
        "DistillConfig",
        __base__=Section,
        __validators__={"check_names": model_validator(mode="after")(check_names)},
        method=(str, Field("kd", description="The distillation method: " + ", ".join(method_names()) + ".")),
        baselines=(
            list[str],
            Field(
                default_factory=list,
                description="Other methods trained with the same data and seed, to compare.",
            ),
        ),
        probes=(
            list[Literal["teacher_knn", "teacher_logreg"]],
            Field(
                default_factory=list,
                max_length=2,
                description="Baselines that train no student: the frozen teacher's embedding classified by 1-NN "
                "('teacher_knn') or logistic regression ('teacher_logreg', C chosen on validation) on the "
                "student's labelled images; paired by seed with the students, never exported.",
            ),
        ),
        variants=(
            dict[str, MethodVariant],
            Field(
                default_factory=dict,
                description="Named variants of a method with other options, to compare in one run, e.g. "
                "{finetune_fresh: {method: finetune, options: {head: fresh}}}; method and baselines may name "
                "them. Options not given are the method's block above.",
            ),
        ),
        **option_fields,
    )


class MethodVariant(Section):
    """A registered method run under its own name with other options."""

    method: str = Field(description="The registered method this variant runs.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of that method (its own block's fields)."
    )


_VARIANT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_variants(section: Any) -> None:
    for name, variant in section.variants.items():
        if not _VARIANT_NAME.match(name):
            raise ValueError(
                f"variants.{name}: a variant name is letters, digits and '_', starting with a letter"
            )
        if name in _METHODS:
            raise ValueError(
                f"variants.{name}: '{name}' is a registered method; give the variant another name"
            )
        if variant.method not in _METHODS:
            raise ValueError(
                f"variants.{name}.method: unknown method '{variant.method}' (available: {', '.join(method_names())})"
            )
        try:
            variant_options(section, variant)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(
                f"variants.{name}.options.{where}: got {shown_value(first.get('input'))}: "
                f"{lower_first(first['msg'])}"
            ) from None


def variant_options(distill: Any, variant: MethodVariant) -> Section:
    """A variant's options: its method's block in the recipe, overridden by what the variant gives (so
    checks that span fields see the values the variant will run with)."""
    base = getattr(distill, variant.method).model_dump()
    return _METHODS[variant.method].options.model_validate({**base, **variant.options})


@dataclass(frozen=True)
class ResolvedMethod:
    """What a name in distill.method/baselines runs: the registered method and its options."""

    name: str
    entry: MethodEntry
    options: Section


def resolve_method(distill: Any, name: str) -> ResolvedMethod:
    """A method or variant named in the recipe's `distill:` section, with the options it runs with."""
    variant = distill.variants.get(name)
    if variant is None:
        return ResolvedMethod(name, get_method(name), getattr(distill, name))
    return ResolvedMethod(name, get_method(variant.method), variant_options(distill, variant))
