"""How the INT8 artifacts were quantized (metrics.json `int8`): the mode, each path tried with its
accuracies, the one shipped and why, the quantization-aware stage, and the build gate's verdict on what
shipped. One source for the report's section, its verdict box and the CLI summary."""

from __future__ import annotations

from edgekd.records import Int8Record, RunMetrics
from edgekd.report.blocks import Block, Heading, Paragraph, Table

INT8_COLUMNS = [
    "path",
    "artifact",
    "val acc %",
    "val drop",
    "test acc %",
    "test drop",
    "on validation",
]


def int8_rows(record: Int8Record) -> list[list[str]]:
    rows = []
    for path in record.paths:
        for name, entry in path.artifacts.items():
            verdict = "passes" if entry["passed_on_validation"] else f"fails: {entry.get('failure', '')}"
            rows.append(
                [
                    path.path + (" (shipped)" if path is record.paths[-1] else ""),
                    f"{name} (by {entry['made_by']})"
                    if entry.get("made_by", path.path) != path.path
                    else name,
                    _pct(entry.get("val_acc")),
                    _pts(entry.get("val_drop")),
                    _pct(entry.get("test_acc")),
                    _pts(entry.get("test_drop")),
                    verdict,
                ]
            )
    return rows


def gate_text(metrics: RunMetrics, record: Int8Record) -> tuple[bool, str]:
    """The build gate on the shipped INT8 artifacts of one student (their parity records)."""
    shipped = [
        artifact
        for artifact in metrics.artifacts
        if artifact.model == record.model and artifact.precision == "int8" and artifact.built
    ]
    failed = [artifact.name for artifact in shipped if not (artifact.parity or {}).get("passed", False)]
    if failed:
        return False, f"the gate fails {', '.join(failed)} (see the artifacts table)"
    return True, f"the gate passes every shipped INT8 artifact ({', '.join(a.name for a in shipped)})"


def summary_line(metrics: RunMetrics, record: Int8Record) -> str:
    """One line for the CLI: mode, shipped path and why, the gate."""
    _, gate = gate_text(metrics, record)
    return f"int8 ({record.model}): mode {record.mode}, shipped {record.shipped_path} ({record.why}); {gate}"


def stage_text(stage: dict) -> str:
    settings = f"{stage['epochs']} epochs, {stage['optimizer']} at lr {stage['lr']:g} ({stage['schedule']})"
    if "temperature" in stage:
        settings += f", KD at T {stage['temperature']:g}, alpha {stage['alpha']:g}"
    quantization = stage.get("quantization", {})
    folded = quantization.get("batchnorms_folded")
    return (
        f"The {stage['mode']} stage: {settings}; {quantization.get('quantizers', '?')} NNCF quantizers "
        f"calibrated on {quantization.get('calibration_images', '?')} training images"
        + (f", {folded} BatchNorms folded into their convolutions" if folded else "")
        + f". It trained on the student's {stage['labelled_images']['train']} labelled training images"
        + (f" and {stage['unlabeled_images']} unlabelled ones" if stage.get("unlabeled_images") else "")
        + f", selected on its {stage['labelled_images']['selection']} validation images"
        + (", with the teacher's logits as targets" if stage["mode"] == "qad" else "")
        + f". Validation accuracy of the fake-quantized student: {stage['start_val_acc']:.2f} % at the "
        f"calibrated start, {stage['val_acc']:.2f} % kept ({stage['kept']}); {stage['train_time_s']:.1f} s of "
        "training."
    )


def int8_blocks(metrics: RunMetrics) -> list[Block]:
    if not metrics.int8:
        return []
    blocks: list[Block] = [Heading(2, "INT8: how the artifacts were quantized")]
    for record in metrics.int8:
        _, gate = gate_text(metrics, record)
        blocks.append(
            Paragraph(
                f"`{record.model}`: `export.int8.mode: {record.mode}`; shipped: **{record.shipped_path}** "
                f"({record.why}). Paths are judged on the validation split (top-1 agreement and accuracy drop "
                f"against the PyTorch student); the test columns are reported, never used to choose. Build "
                f"gate: {gate}."
            )
        )
        blocks.append(Table.of(INT8_COLUMNS, int8_rows(record)))
        for path in record.paths:
            if path.stage is not None:
                blocks.append(Paragraph(stage_text(path.stage)))
        for name, why in record.ptq_only.items():
            blocks.append(Paragraph(f"`{name}` INT8 stays post-training quantization: {why}."))
    return blocks


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
