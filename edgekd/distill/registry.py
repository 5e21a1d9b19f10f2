"""Finding distillation methods by name: the catalog's entries, the recipe's `distill:` section built from
them, and the check by which a method's file declares which entry it implements.

Every lookup here reads catalog.py only, so a recipe is loaded without importing any method's code (nor
torch); an entry's `distiller` and `plan` import it on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, create_model, model_validator

from edgekd.config.errors import describe_validation_error
from edgekd.distill.catalog import CATALOG, MethodEntry
from edgekd.errors import EdgekdError
from edgekd.schema_base import Section

_Class = TypeVar("_Class", bound=type)


def implements(name: str) -> Callable[[_Class], _Class]:
    """Class decorator for a method's Distiller: catalog entry `name` must point at the decorated class.

    Checked when the method's file is imported, so a method renamed or moved on one side only fails
    loudly instead of training another class (or none) under that name.
    """

    def check(cls: _Class) -> _Class:
        entry = CATALOG.get(name)
        here = f"{cls.__module__}.{cls.__qualname__}"
        if entry is None:
            raise ImportError(
                f"{here} implements distillation method '{name}', which catalog.py does not declare"
            )
        if (entry.module, entry.class_name) != (cls.__module__, cls.__qualname__):
            raise ImportError(
                f"{here} implements distillation method '{name}', but catalog.py points it at "
                f"{entry.module}.{entry.class_name}"
            )
        return cls

    return check


def method_names() -> list[str]:
    return sorted(CATALOG)


def get_method(name: str) -> MethodEntry:
    if name not in CATALOG:
        raise EdgekdError(f"distill.method: unknown method '{name}' (available: {', '.join(method_names())})")
    return CATALOG[name]


def distill_section_model() -> type[Section]:
    """Build the recipe's `distill:` section: the method, its baselines, and an options block per method."""
    option_fields: dict[str, Any] = {
        name: (entry.options, Field(default_factory=entry.options, description=entry.summary))
        for name, entry in sorted(CATALOG.items())
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
# A variant's name is part of file names (models/<name>_seed<k>.pt, artifacts/<name>_openvino_int8.xml,
# train/<name>/...): short enough that every one of them stays far below the file systems' 255 bytes.
MAX_VARIANT_NAME = 64


def _short(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:24]}..."


def check_variants(section: Any) -> None:
    for name, variant in section.variants.items():
        if not _VARIANT_NAME.match(name):
            raise ValueError(
                f"variants.{_short(name)}: a variant name is letters, digits and '_', starting with a letter"
            )
        if len(name) > MAX_VARIANT_NAME:
            raise ValueError(
                f"variants.{_short(name)}: a name of {len(name)} characters; allowed: at most {MAX_VARIANT_NAME} "
                "(it names files and folders)"
            )
        if name in CATALOG:
            raise ValueError(
                f"variants.{name}: '{name}' is a registered method; give the variant another name"
            )
        if variant.method not in CATALOG:
            raise ValueError(
                f"variants.{name}.method: unknown method '{variant.method}' (available: {', '.join(method_names())})"
            )
        try:
            variant_options(section, variant)
        except ValidationError as exc:
            # described against the method's options block, so a misspelt option suggests that block's fields
            where, message = describe_validation_error(exc, CATALOG[variant.method].options)
            raise ValueError(f"variants.{name}.options.{where}: {message}") from None


def variant_options(distill: Any, variant: MethodVariant) -> Section:
    """A variant's options: its method's block in the recipe, overridden by what the variant gives (so
    checks that span fields see the values the variant will run with)."""
    base = getattr(distill, variant.method).model_dump()
    return CATALOG[variant.method].options.model_validate({**base, **variant.options})


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
