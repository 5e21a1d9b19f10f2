"""Size the student to a latency budget: time the family on the target runtime (cached per machine), keep
the members that fit, choose one by the recipe's rule, and say how in a candidate table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgekd.config.models import LatencyBudgetConfig
from edgekd.data import DataBundle
from edgekd.errors import EdgekdError
from edgekd.exporters import ExportOptions, get_exporter
from edgekd.formats import FORMATS, LATENCY_BACKENDS
from edgekd.models.budget import (
    Member,
    describe_member,
    family_members,
    member_flops,
    member_params,
    member_size,
)
from edgekd.recipe import Recipe
from edgekd.records import Candidate, Sizing
from edgekd.runtime import model_io, split_arrays
from edgekd.sizing.cache import LatencyCache
from edgekd.sizing.fingerprint import LatencyTarget, fingerprint
from edgekd.sizing.measure import SizingInputs, describe_export, sizing_export_options, time_member
from edgekd.sizing.search import MemberState, largest_first, search_fitting

Say = Callable[[str], None]
# Real training images that set the BatchNorm statistics and calibrate INT8 while sizing: latency does not
# depend on how well a random network is calibrated, only on the graph, which these already fix.
SIZING_IMAGES = 64
FIELD = "student.budget.latency"


@dataclass
class Family:
    """A family's members at the student's input, with what can be known of them without timing."""

    name: str
    members: list[Member]
    states: list[MemberState]

    def describe(self, state: MemberState) -> str:
        return describe_member(*self.members[state.index])


@dataclass
class Sizer:
    """One sizing: the budget, what is timed, the family, the cache and the timer that uses it."""

    budget: LatencyBudgetConfig
    target: LatencyTarget
    family: Family
    cache: LatencyCache
    measure: Callable[[MemberState], tuple[dict[str, float], str]]
    started: float

    def record(self, chosen: MemberState | None, proxy: dict[int, float]) -> Sizing:
        seconds = time.perf_counter() - self.started
        return sizing_record(self.family, self.target, self.budget, chosen, self.cache, proxy, seconds)


def open_sizer(recipe: Recipe, data: DataBundle, say: Say | None, refresh: bool = False) -> Sizer:
    started = time.perf_counter()
    budget = recipe.latency_budget
    assert budget is not None and recipe.student.family is not None
    check_backend_available(budget, recipe)
    inputs = sizing_inputs(recipe, data)
    target = latency_target(recipe, data, inputs.export)
    family = load_family(recipe.student.family, target, recipe.student.budget.params)
    cache = LatencyCache(recipe.latency_cache_dir, fingerprint(target))
    if refresh:
        cache.entries.clear()
    measure = member_timer(family, target, inputs, cache, say)
    return Sizer(budget, target, family, cache, measure, started)


def size_to_latency(
    recipe: Recipe, data: DataBundle, device: torch.device | None = None, say: Say | None = None
) -> tuple[Member, Sizing]:
    """The member the recipe's latency budget and rule choose, and the record of how it was chosen."""
    sizer = open_sizer(recipe, data, say)
    budget, family = sizer.budget, sizer.family
    wanted = budget.proxy.candidates if budget.rule == "proxy" else 1
    fits = fits_limit(budget)
    for state in family.states:  # what an earlier run measured on this machine is known already
        cached = sizer.cache.get(family.describe(state)) if state.source != "skipped" else None
        if cached is not None:
            state.timings, state.source = cached, "cached"
    search_fitting(family.states, fits, sizer.measure, wanted, family.describe)
    fitting = [s for s in largest_first(family.states) if s.fits]
    if not fitting:
        raise impossible_budget(family, budget, sizer.target)
    finalists = fitting[:wanted]
    for state in finalists:  # an inferred finalist is timed too: the table shows what was chosen from
        if state.source == "inferred":
            state.timings, state.source = sizer.measure(state)
            state.fits, state.note = fits(state.timings), ""
    finalists = [s for s in finalists if s.fits]
    if budget.rule == "largest":
        return family.members[finalists[0].index], sizer.record(finalists[0], {})
    chosen, proxy = choose_by_proxy(recipe, data, family, finalists, device or torch.device("cpu"), say)
    return family.members[chosen.index], sizer.record(chosen, proxy)


def choose_by_proxy(
    recipe: Recipe,
    data: DataBundle,
    family: Family,
    finalists: list[MemberState],
    device: torch.device,
    say: Say | None,
) -> tuple[MemberState, dict[int, float]]:
    """The finalist with the best validation accuracy after proxy training (ties: more parameters)."""
    from edgekd.sizing.proxy import proxy_scores

    scores = proxy_scores(recipe, data, [family.members[s.index] for s in finalists], device, say)
    for state, score in zip(finalists, scores, strict=True):
        state.note = f"proxy val acc {score:.2f} % after {recipe.latency_budget.proxy.epochs} epochs"
    chosen = max(zip(finalists, scores, strict=True), key=lambda pair: (pair[1], pair[0].params))[0]
    return chosen, dict(zip((s.index for s in finalists), scores, strict=True))


def latency_table(recipe: Recipe, data: DataBundle, say: Say | None = None, refresh: bool = False) -> Sizing:
    """Every member within the parameter budget timed (from the cache unless ``refresh``): the whole table,
    for `edgekd latency-table`; ``chosen`` is what rule `largest` would pick ("" when none fits)."""
    sizer = open_sizer(recipe, data, say, refresh)
    fits = fits_limit(sizer.budget)
    for state in largest_first(sizer.family.states):
        if state.source != "skipped":
            state.timings, state.source = sizer.measure(state)
            state.fits = fits(state.timings)
    fitting = [s for s in largest_first(sizer.family.states) if s.fits]
    return sizer.record(fitting[0] if fitting else None, {})


def progress_line(progress, label: str) -> Say | None:
    """A ``say`` that shows what sizing is timing as one line of a progress display (None without one)."""
    if progress is None or getattr(progress, "disable", False):
        return None
    task: list[Any] = []

    def say(text: str) -> None:
        if not task:
            task.append(progress.add_task(label, total=None))
        progress.update(task[0], description=f"{label}: {text}")

    return say


def check_backend_available(budget: LatencyBudgetConfig, recipe: Recipe) -> None:
    """A runtime can only be timed where its artifacts can be built and run (TensorRT, onnxruntime on its
    CUDA provider): say so first."""
    if budget.format is None:
        return  # the PyTorch student runs wherever the build does
    entry = FORMATS[budget.format]
    if "device" in entry.runner_settings:
        from edgekd.preflight import check_onnxruntime_device

        check_onnxruntime_device(recipe.benchmark.onnxruntime_device)
    reason = get_exporter(budget.format).cannot_build_here()
    if reason is not None:
        *others, last = [name for name in LATENCY_BACKENDS if name != budget.backend]
        raise EdgekdError(
            f"{FIELD}.backend: {budget.backend} {reason} on this machine (none here); run "
            f"`edgekd latency-table` on the target to size there, or choose {', '.join(others)} or {last}"
        )


def latency_target(recipe: Recipe, data: DataBundle, export: ExportOptions | None = None) -> LatencyTarget:
    """What the members are timed as; ``export``: the sizing inputs' export options (made from the data
    when not given), so the fingerprint records what the exports really used."""
    budget = recipe.latency_budget
    spec = data.input_spec
    timing = recipe.benchmark.to_dict()
    del timing["batches"], timing["threads"]
    export = export or sizing_inputs(recipe, data).export
    return LatencyTarget(
        family=recipe.student.family,
        input_shape=(spec.channels, spec.height, spec.width),
        num_classes=data.num_classes,
        backend=budget.backend,
        precision=budget.precision,
        batch=budget.batch,
        threads=recipe.latency_threads,
        statistic=budget.statistic,
        timing=timing,
        export=describe_export(export, budget.format) if budget.format is not None else {},
        device=runner_device(recipe, budget.format),
    )


def runner_device(recipe: Recipe, format_name: str | None) -> str:
    """Where the members run: the recipe's onnxruntime device for a runner that takes it, else the CPU."""
    if format_name is not None and "device" in FORMATS[format_name].runner_settings:
        return recipe.benchmark.onnxruntime_device
    return "cpu"


def sizing_inputs(recipe: Recipe, data: DataBundle) -> SizingInputs:
    images, _ = split_arrays(data, "train", min(SIZING_IMAGES, recipe.export.calibration_images))
    export = sizing_export_options(
        recipe.export.opset, recipe.export.max_batch, recipe.export.calibration_method, len(images)
    )
    return SizingInputs(images=images, io=model_io(data), export=export, seed=recipe.seed)


def load_family(name: str, target: LatencyTarget, params_limit: int | None) -> Family:
    """Every member with its parameters, FLOPs and grid size; those over ``params_limit`` are skipped."""
    members = family_members(name)
    channels, height, width = target.input_shape
    states = []
    for index, member in enumerate(members):
        params = member_params(member, target.num_classes, channels)
        state = MemberState(
            index,
            params,
            member_flops(member, target.num_classes, channels, (height, width)),
            member_size(member),
        )
        if params_limit is not None and params > params_limit:
            state.source, state.fits, state.note = (
                "skipped",
                False,
                f"over the {params_limit:,}-parameter budget",
            )
        states.append(state)
    return Family(name, members, states)


def fits_limit(budget: LatencyBudgetConfig) -> Callable[[dict[str, float]], bool]:
    return lambda timings: timings[budget.statistic] <= budget.limit_ms


def member_timer(
    family: Family, target: LatencyTarget, inputs: SizingInputs, cache: LatencyCache, say: Say | None
) -> Callable[[MemberState], tuple[dict[str, float], str]]:
    """Timings of a member: from the cache when this machine measured it before, else measured and cached."""

    def measure(state: MemberState) -> tuple[dict[str, float], str]:
        name = family.describe(state)
        cached = cache.get(name)
        if cached is not None:
            return cached, "cached"
        if say is not None:
            say(f"timing {name} on {target.describe()}")
        timings = time_member(family.members[state.index], target, inputs)
        cache.put(name, timings)
        return timings, "measured"

    return measure


def impossible_budget(family: Family, budget: LatencyBudgetConfig, target: LatencyTarget) -> EdgekdError:
    timed = [s for s in family.states if s.timings is not None]
    if not timed:  # every member is over the parameter budget
        return EdgekdError(
            f"{FIELD}: no '{family.name}' member is within student.budget.params, so none can be timed; "
            "allowed: a larger parameter budget"
        )
    fastest = min(timed, key=lambda s: s.timings[budget.statistic])
    return EdgekdError(
        f"{FIELD}.limit_ms: {budget.limit_ms:g} ms is below the fastest '{family.name}' member "
        f"({family.describe(fastest)}: {budget.statistic} {fastest.timings[budget.statistic]:.4g} ms on "
        f"{target.describe()}); allowed: a larger limit, or a smaller input"
    )


def sizing_record(
    family: Family,
    target: LatencyTarget,
    budget: LatencyBudgetConfig,
    chosen: MemberState | None,
    cache: LatencyCache,
    proxy: dict[int, float],
    seconds: float,
) -> Sizing:
    rows = [
        candidate_row(family, state, budget, proxy.get(state.index)) for state in largest_first(family.states)
    ]
    sources = [row.source for row in rows]
    return Sizing(
        target={
            "family": family.name,
            "backend": target.backend,
            "device": target.device,
            "precision": target.precision,
            "batch": target.batch,
            "threads": target.threads,
            "statistic": budget.statistic,
            "limit_ms": budget.limit_ms,
        },
        rule=budget.rule,
        chosen=family.describe(chosen) if chosen is not None else "",
        candidates=rows,
        measured=sources.count("measured"),
        cached=sources.count("cached"),
        inferred=sources.count("inferred"),
        time_s=round(seconds, 2),
        cache_file=str(cache.path),
        fingerprint=cache.key,
    )


def candidate_row(
    family: Family, state: MemberState, budget: LatencyBudgetConfig, proxy_acc: float | None
) -> Candidate:
    name, model_args = family.members[state.index]
    timings = {key: round(value, 4) for key, value in (state.timings or {}).items()}
    return Candidate(
        member=family.describe(state),
        model=name,
        model_args=dict(model_args),
        params=state.params,
        flops=state.flops,
        latency_ms=timings.get(budget.statistic),
        timings_ms=timings,
        source=state.source if state.source != "unknown" else "not needed",
        fits=state.fits,
        note=state.note or ("" if state.known else "fewer parameters than the choice: not timed"),
        proxy_val_acc=proxy_acc,
    )
