"""The report's content, once: the blocks both report.md and report.html show, section by section."""

from __future__ import annotations

from edgekd.bench.machine_load import artifacts_load_warning
from edgekd.latency_settings import threads_text
from edgekd.recipe import Recipe
from edgekd.records import Candidate, RunMetrics, Sizing, StageRecord
from edgekd.report.blocks import Block, BulletList, Code, Heading, Image, Paragraph, Table
from edgekd.report.int8 import int8_blocks
from edgekd.report.tables import (
    DATA_COLUMNS,
    artifact_paths,
    class_list_text,
    data_rows,
    deployment_table,
    human_count,
    ms_cell,
    over_seeds_cell,
    summary_columns,
    summary_rows,
    teacher_classes,
    teacher_is_loaded,
    teacher_record_of,
    teacher_saw_student_images,
)
from edgekd.report.verdicts import budget_verdict


def report_blocks(recipe: Recipe, metrics: RunMetrics, plot_files: list[str]) -> list[Block]:
    return [
        *overview_blocks(recipe, metrics),
        *models_blocks(metrics),
        *paired_blocks(metrics),
        *protocol_blocks(recipe, metrics),
        Heading(3, "What each model used"),
        Table.of(DATA_COLUMNS, data_rows(metrics)),
        *unlabeled_blocks(metrics),
        *connector_blocks(metrics),
        *stage_blocks(metrics),
        *transfer_check_blocks(metrics),
        *sizing_blocks(metrics.student_choice.sizing),
        *shipping_blocks(metrics),
        *artifact_blocks(metrics),
        *int8_blocks(metrics),
        *[Image(name, name) for name in plot_files],
        Paragraph(files_text(metrics)),
    ]


def shipping_blocks(metrics: RunMetrics) -> list[Block]:
    """Which student the run ships and why, what to know before shipping it, and every deployable file."""
    blocks: list[Block] = [Heading(2, "What to ship")]
    if metrics.warnings:
        blocks.append(BulletList([f"**Warning:** {warning}" for warning in metrics.warnings]))
    shipped = metrics.shipped
    if shipped is None:  # metrics.json of a run before edgekd chose: the main method's was deployed
        blocks.append(Paragraph(f"The deployed student: `{metrics.main.name}`, the main method's."))
    else:
        seeds = metrics.run.student_seeds
        weights = f", seed {shipped.seed}'s weights" if len(seeds) > 1 else ""
        others = [name for name in shipped.exported if name != shipped.model]
        also = f" Also exported (export.models: {shipped.rule}): {', '.join(others)}." if others else ""
        blocks.append(
            Paragraph(
                f"Shipped: `{shipped.model}`{weights}, {shipped.reason}. Chosen on validation accuracy, never "
                f"on the test split.{also}"
            )
        )
    files = [(what, path) for what, path in artifact_paths(metrics)]
    files += [(f"{record.name} (PyTorch weights)", record.checkpoint) for record in _exported_models(metrics)]
    if files:
        blocks.append(BulletList([f"{what}: `{path}`" for what, path in files if path]))
    blocks.append(Paragraph("How to run each artifact on a device: `DEPLOY.md` in the run folder."))
    return blocks


def _exported_models(metrics: RunMetrics) -> list:
    names = metrics.shipped.exported if metrics.shipped is not None else [metrics.main.name]
    return [record for record in metrics.models if record.name in names]


def files_text(metrics: RunMetrics) -> str:
    """The run folder's files; `artifacts/` only where something was exported into it."""
    exported = any(record.format != "pytorch" and record.built for record in metrics.artifacts)
    artifacts = "`artifacts/` (deployables), " if exported else ""
    return (
        "Files: `metrics.json` (all numbers), `history.csv` (per-epoch), `bench.csv` (per artifact and "
        f"batch), `recipe.yaml` (resolved recipe), `models/` (weights), {artifacts}`train/` (resumable "
        "training state)."
    )


def seeds_text(metrics: RunMetrics) -> str:
    """``seed 0``, or every student seed and the teacher's (trained once) over several seeds."""
    run = metrics.run
    seeds = run.student_seeds or [run.seed]
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    loaded = teacher_record_of(metrics) if teacher_is_loaded(metrics) else None
    teacher = f"loaded from a {loaded.source}" if loaded else f"trained once with seed {run.seed}"
    return f"seeds {', '.join(map(str, seeds))} (every student once per seed; the teacher {teacher})"


def budget_text(metrics: RunMetrics) -> str:
    """The limits the recipe set: parameters, latency on the target runtime, or both."""
    params, latency = metrics.budget.get("params"), metrics.budget.get("latency")
    limits = [f"{params:,} params"] if params else []
    if latency:
        threads = threads_text(latency.get("threads"))
        limits.append(
            f"{latency['statistic']} <= {latency['limit_ms']:g} ms on {latency['backend']} {latency['precision']}"
            f", batch {latency['batch']}, {threads}"
        )
    return " and ".join(limits) or "none"


def overview_blocks(recipe: Recipe, metrics: RunMetrics) -> list[Block]:
    choice, data = metrics.student_choice, metrics.student_data
    sizes = data["sizes"]
    check = metrics.budget_check
    # the limits the recipe set (the verdict box of report.html also shows an unbounded parameter count)
    verdicts = (
        [line for line in budget_verdict(check).details if "no parameter limit" not in line] if check else []
    )
    return [
        Heading(1, f"edgekd run `{recipe.name}`"),
        BulletList(
            (
                f"data: {data['dataset']}, {data['num_classes']} classes, train/val/test = "
                f"{sizes['train']}/{sizes['val']}/{sizes['test']} images",
                f"student: `{choice.arch}` {choice.model_args or ''} — {human_count(choice.params)} params, "
                f"{human_count(choice.flops)} FLOPs per image ({choice.how})",
                f"budget: {budget_text(metrics)}; method `{recipe.distill.method}`, "
                f"baselines: {', '.join(recipe.distill.baselines) or 'none'}",
                *(f"budget check of the deployed student: {line}" for line in verdicts),
                f"{seeds_text(metrics)}, device {metrics.run.device}, wall time {metrics.run.wall_time_s:.1f} s",
                training_line(recipe, metrics),
            )
        ),
    ]


def training_line(recipe, metrics: RunMetrics) -> str:
    """How the networks were trained: processes, precision, layout, and whether the numbers repeat."""
    run = metrics.run
    spread = run.distributed
    processes = (
        f"data-parallel over {spread['processes']} processes ({spread['backend']}, SyncBatchNorm "
        f"{'on' if spread['sync_batchnorm'] else 'off'}; data.batch_size is the global batch)"
        if spread
        else "one process"
    )
    amp = recipe.train.amp or "fp32"
    layout = ", channels_last" if recipe.train.channels_last else ""
    mode = (
        "deterministic (cuDNN autotuning off, deterministic algorithms: same recipe and seed, same numbers on "
        "this machine)"
        if run.mode == "deterministic"
        else "speed (cuDNN autotuning and non-deterministic kernels: numbers vary from run to run)"
    )
    return f"training: {processes}; students in {amp}{layout}; mode {mode}"


def models_blocks(metrics: RunMetrics) -> list[Block]:
    return [
        Heading(2, "Models"),
        Table.of(summary_columns(metrics), summary_rows(metrics)),
        Paragraph(
            "Accuracies are top-1 on the held-out test split (mean ± sample std over seeds); models are "
            "selected on the validation images only. `OVER` marks a model that breaks the budget (a "
            "fine-tuned teacher does, by design)."
        ),
    ]


def connector_blocks(metrics: RunMetrics) -> list[Block]:
    extra = [r for r in metrics.models if r.extra_training_params]
    if not extra:
        return []
    return [
        Paragraph(
            "Training-only parameters (connectors; not exported): "
            + ", ".join(f"{r.name} {r.extra_training_params:,}" for r in extra)
        )
    ]


# ------------------------------------------------------------------------------------------ stages
STAGE_COLUMNS = [
    "model",
    "stage",
    "epochs",
    "kept",
    "selected epoch",
    "selection score",
    "parameters trained",
    "labelled (train / selection)",
    "unlabelled",
    "artifacts",
    "notes",
]


def stage_blocks(metrics: RunMetrics) -> list[Block]:
    """Each multi-stage model's stages (first seed): what each trained, on which images, which epoch it
    kept and why, and the artifacts it handed on."""
    rows = [
        stage_row(record.name, stage)
        for record in metrics.models
        if len(record.stages) >= 2
        for stage in record.stages
    ]
    if not rows:
        return []
    return [
        Heading(3, "Stages"),
        Paragraph(
            "Methods that train in stages, first seed: each stage's own optimizer and schedule ran over the "
            "parameters it trains, on the images shown, and kept the epoch its rule chose (`metric`: the "
            "stage's own validation score, e.g. the embedding's 1-NN accuracy). Artifacts: what a stage "
            "handed on (→, saved in its folder) or took in (←); `loaded` ones come from another run."
        ),
        Table.of(STAGE_COLUMNS, rows),
    ]


def stage_row(model: str, stage: StageRecord) -> list[str]:
    if stage.skipped:
        return [model, stage.stage, "0", "-", "-", "-", "0", "-", "-", stage.skipped, "-"]
    score = stage.best_score
    data = stage.data
    handed = [f"→ {a.name}" for a in stage.produces]
    handed += [f"← {a.name}" + (" (loaded)" if a.origin == "loaded" else "") for a in stage.consumes]
    return [
        model,
        stage.stage,
        str(stage.epochs),
        stage.select,
        str(stage.best_epoch),
        "-" if score is None else f"{score:.2f}",
        f"{stage.trained_params:,}",
        "-" if data is None else labelled_use(data),
        "-" if data is None else str(data.unlabeled),
        ", ".join(handed) or "-",
        stage_notes(stage),
    ]


def labelled_use(data) -> str:
    """'977 / 216'; a stage that held out training images for itself: '1222 (245 held out) / 0'."""
    held = f" ({data.held_out} held out)" if data.held_out else ""
    return f"{data.labelled_train}{held} / {data.labelled_selection}"


def stage_notes(stage: StageRecord) -> str:
    """What the stage's objective said it did, its numbers on the validation images, and for a check its
    accuracies."""
    parts = [stage.notes] if stage.notes else []
    parts += [f"{name} {value:.4g}" for name, value in stage.measures.items()]
    if stage.branch:
        parts.append(f"check val {stage.best_val_acc:.2f} %, test {stage.test_acc:.2f} %")
    return "; ".join(parts) or "-"


def transfer_check_blocks(metrics: RunMetrics) -> list[Block]:
    """The intermediate-transfer checks (SRM paper's Table II) over seeds: accuracy of a fresh classifier
    trained with CE from each pre-trained student."""
    rows = []
    for record in metrics.models:
        seeds = [run.stages for run in record.per_seed] or [record.stages]
        for name in dict.fromkeys(s.stage for stages in seeds for s in stages if s.branch):
            checks = [s for stages in seeds for s in stages if s.branch and s.stage == name]
            rows.append(
                [
                    record.name,
                    name,
                    checks[0].notes or "-",
                    str(len(checks)),
                    over_seeds_cell([c.best_val_acc for c in checks]),
                    over_seeds_cell([c.test_acc for c in checks]),
                ]
            )
    if not rows:
        return []
    return [
        Heading(3, "Quality of the intermediate transfer"),
        Paragraph(
            "After the pre-training stage, a fresh classifier trained with cross-entropy alone (no teacher): "
            "how good a starting point each pre-training made (SRM paper, Table II). A check hands nothing "
            "on; it is reported, never used to choose anything. Mean ± std over seeds."
        ),
        Table.of(["model", "stage", "what trained", "seeds", "val acc %", "test acc %"], rows),
    ]


# ---------------------------------------------------------------------------------- claims, protocol
def paired_blocks(metrics: RunMetrics) -> list[Block]:
    """The paired comparisons spelled out: per-seed differences, mean, interval and what it shows."""
    compared = [r for r in metrics.models if r.paired]
    if not compared:
        return []
    first = compared[0].paired
    how = (
        f"({100 * first.confidence:.0f} %, {_interval_name(first.interval_method)}). "
        '"better"/"worse": the interval excludes zero.'
        if any(r.paired.interval is not None for r in compared)
        else "(no interval: one seed, or the same difference on every seed; train with more --seeds)."
    )
    how += " " + _family_text(first)
    items = []
    for record in compared:
        paired = record.paired
        per_seed = ", ".join(f"{d:+.2f}" for d in paired.differences)
        interval = "" if paired.interval is None else " [{:+.2f}, {:+.2f}]".format(*paired.interval)
        adjusted = (
            "" if paired.adjusted_p_value is None else f"; Holm-adjusted p {paired.adjusted_p_value:.3g}"
        )
        items.append(
            f"`{record.name}`: {paired.mean:+.2f}{interval} — {paired.verdict} "
            f"(seeds {', '.join(map(str, paired.seeds))}: {per_seed}{adjusted})"
        )
    return [
        Heading(3, f"Paired comparison with `{first.reference}`"),
        Paragraph(
            f"Per seed, each student's test accuracy minus `{first.reference}`'s on the same seed (same "
            "images, same test set); the interval is on the mean difference " + how
        ),
        BulletList(tuple(items)),
    ]


def _family_text(paired) -> str:
    """How many comparisons the table makes, and what that does to its verdicts."""
    plural = "s" if paired.comparisons != 1 else ""
    count = f"The table makes {paired.comparisons} comparison{plural} with `{paired.reference}`"
    if paired.correction == "holm":
        return count + "; verdicts are Holm-corrected over them (`report.correction: holm`)."
    if paired.comparisons == 1:
        return count + "."
    return (
        count + ", each judged alone: by chance alone some may show a difference "
        "(`report.correction: holm` corrects for it)."
    )


def _interval_name(method: str) -> str:
    return "Student's t over seeds" if method == "t" else "percentile bootstrap over seeds"


def protocol_blocks(recipe: Recipe, metrics: RunMetrics) -> list[Block]:
    """Where the student's images came from, and what the teacher had seen of them."""
    data = metrics.student_data
    items = [
        f"the student's images come from {_pool_text(metrics)}; its labelled images are {_draw_text(data)};",
        f"model selection: `train.select: {recipe.train.select}` on {data['sizes']['val']} labelled "
        f"validation images ({_validation_text(data)});",
        f"training batches: `data.last_batch: {data.get('last_batch', 'keep')}`, the smallest holds "
        f"{data.get('smallest_train_batch', '?')} images;",
    ]
    unlabeled = data.get("unlabeled") or {}
    if unlabeled.get("images") and unlabeled.get("teacher_acc") is not None:
        items.append(
            f"the teacher's top-1 on the student's {unlabeled['images']:,} unlabelled images is "
            f"{unlabeled['teacher_acc']:.2f} % (near 100 % means it trained on them: its outputs there are "
            "close to the true labels);"
        )
    env = metrics.environment
    items.append(
        f"trained on {env.get('cpu', '?')} ({env.get('cpu_vendor') or '?'}; "
        f"{', '.join(env.get('cpu_isa') or []) or '?'}), {env.get('torch_threads', '?')} PyTorch threads: "
        "bit-exact on this machine and thread count, not across CPUs."
    )
    return [Heading(3, "Protocol"), BulletList(tuple(items))]


def _pool_text(metrics: RunMetrics) -> str:
    """Where the student's images come from and whether the teacher trained on them: the same fact the
    "What each model used" table states (tables.teacher_saw_student_images)."""
    data = metrics.student_data
    saw = teacher_saw_student_images(metrics)
    if data.get("student_pool") == "customer":
        where = (
            f"a customer hold-out ({100 * data['customer_fraction']:.0f} % of each class of the training "
            "split)"
        )
    else:
        where = "the training split"
    if saw is True:
        return "the teacher's own training images (the SKD paper's protocol: the teacher has seen them, labelled)"
    if saw is None:
        teacher = teacher_record_of(metrics)
        stated = teacher.trained_on if teacher is not None else None
        source = teacher.source if teacher is not None else "checkpoint"
        known = f"loaded from a {source}" + (f"; stated: {stated}" if stated else "")
        return f"{where}; whether the teacher trained on them is not known ({known})"
    if data.get("label_relation") == "disjoint":
        classes = class_list_text(metrics.teacher_data, teacher_classes(metrics))
        return (
            f"{where}, of classes the teacher was not trained on (its classes: {classes}): the teacher never "
            "trained on them"
        )
    return f"{where}, which the teacher never trained on"


def _draw_text(data: dict) -> str:
    draws = data.get("draw_seeds") or []
    if data.get("draws") == "per_seed" and len(draws) > 1:
        return "drawn anew for each seed (every method of one seed gets the same draw)"
    if data.get("draws") == "per_seed":
        return "drawn for the seed"
    return "one fixed draw for every seed"


def _validation_text(data: dict) -> str:
    val = data.get("val_source", "validation split")
    per_class = data.get("val_per_class")
    return (
        f"{per_class} per class from the {val}" if per_class else f"the whole {val} of the student's classes"
    )


def unlabeled_blocks(metrics: RunMetrics) -> list[Block]:
    """Which students also trained on unlabelled images: their accuracies are not label-for-label fair."""
    unlabeled = metrics.student_data.get("unlabeled") or {}
    if not unlabeled.get("images"):
        return []
    users = [r.name for r in metrics.models if r.unlabeled_images]
    others = [r.name for r in metrics.models if r.role == "student" and not r.unlabeled_images]
    return [
        Paragraph(
            f"Unlabelled images ({unlabeled['images']:,}, `data.unlabeled: {unlabeled['source']}`) fed the "
            f"distillation terms of: {', '.join(users) or 'none'}; not used by: {', '.join(others) or 'none'} "
            "(no label-free term)."
        )
    ]


# ------------------------------------------------------------------------------------ student sizing
SIZING_COLUMNS = ["member", "params", "FLOPs", "latency ms", "source", "fits", "note"]
SIZING_RULES = {
    "largest": "the largest member within the limit",
    "proxy": "the best validation accuracy after a short proxy training, among the members within the limit",
}


def sizing_blocks(sizing: Sizing | None) -> list[Block]:
    """How a latency budget chose the student: the target, the rule and every candidate it looked at."""
    if sizing is None:
        return []
    with_proxy = any(c.proxy_val_acc is not None for c in sizing.candidates)
    columns = SIZING_COLUMNS + (["proxy val acc %"] if with_proxy else [])
    rows = [sizing_row(c, sizing.chosen, with_proxy) for c in sizing.candidates]
    return [Heading(2, "Student sizing"), Paragraph(sizing_intro(sizing)), Table.of(columns, rows)]


def sizing_intro(sizing: Sizing) -> str:
    target = sizing.target
    threads = target.get("threads")
    device = target.get("device", "cpu")
    where = "" if device == "cpu" else f" on {device}"
    return (
        f"Target: {target.get('backend', '?')}{where} {target.get('precision', '?')}, "
        f"{target.get('statistic', '?')} latency at batch {target.get('batch', '?')} on "
        f"{threads_text(threads)}, "
        f"limit {target.get('limit_ms', '?')} ms. Rule `{sizing.rule}`: "
        f"{SIZING_RULES.get(sizing.rule, sizing.rule)}; chosen `{sizing.chosen}` in {sizing.time_s:.1f} s. "
        f"Candidates timed now: {sizing.measured}, read from the latency cache: {sizing.cached}, inferred from "
        f"a timed member they dominate or are dominated by: {sizing.inferred}. Latencies were measured on "
        "random weights with BatchNorm statistics (and INT8 calibration) from real training images"
        + (f"; the table is cached in `{sizing.cache_file}` for this machine." if sizing.cache_file else ".")
    )


def sizing_row(candidate: Candidate, chosen: str, with_proxy: bool) -> list[str]:
    fits = {True: "fits", False: "OVER", None: "-"}[candidate.fits]
    member = candidate.member + (" (chosen)" if candidate.member == chosen else "")
    row = [
        member,
        human_count(candidate.params),
        human_count(candidate.flops),
        ms_cell(candidate.latency_ms),
        candidate.source,
        fits,
        candidate.note or "-",
    ]
    if with_proxy:
        row.append("-" if candidate.proxy_val_acc is None else f"{candidate.proxy_val_acc:.2f}")
    return row


# ------------------------------------------------------------------------------------------ artifacts
def artifact_blocks(metrics: RunMetrics) -> list[Block]:
    """The exported artifacts of the shipped student(s); with nothing exported, its PyTorch latency when it was
    timed; nothing at all when neither (no table whose rows would only repeat the Models table)."""
    table = deployment_table(metrics)
    if table is None:
        return []
    artifacts = metrics.artifacts
    env = metrics.environment
    blocks: list[Block] = [Heading(2, table.title), Table.of(table.columns, table.rows)]
    if table.exported:
        blocks.append(
            Paragraph(
                f"The deployed student: `{table.deployed}`. Parity: every artifact and the PyTorch student ran "
                "on the same validation images (max absolute logit difference, top-1 agreement). Accuracy: "
                "top-1 on the test split through the artifact's own runtime; drop against the PyTorch student. "
                "Latency: cold start = load + first inference; p50/p90/p99 over timed runs after warm-up, each "
                "the bare inference call on a batch bound once (as benchmark_app times an InferRequest); img/s "
                "measured at that batch size."
            )
        )
    else:
        blocks.append(
            Paragraph(
                "No artifact was exported (`export.targets` is empty): nothing was checked for parity and "
                f"there is no `artifacts/` folder. `benchmark.enabled` timed the shipped student `{table.deployed}` "
                "in PyTorch (eager, FP32) on the CPU: cold start = load + first inference; "
                "p50/p90/p99 over timed runs after warm-up; img/s at that batch size. Its accuracy is in the "
                "Models table."
            )
        )
    if env:
        # Where an artifact ran on a GPU (the `runs on` column), the GPU is named too.
        on_gpu = any("cuda" in (record.runs_on or "").lower() for record in artifacts)
        gpu = f", GPU {env.get('cuda_device') or '?'}" if on_gpu else ""
        blocks.append(
            Paragraph(
                f"Measured on: {env.get('cpu', '?')}{gpu}, threads {env.get('threads') or 'the runtime default'}."
            )
        )
    busy = artifacts_load_warning(artifacts)
    if busy:
        blocks.append(Paragraph(f"**Warning:** {busy}"))
    for record in artifacts:
        command = record.details.get("trtexec")
        if command:
            blocks += [Paragraph(f"`{record.name}`: {record.status}:"), Code(command)]
    return blocks
