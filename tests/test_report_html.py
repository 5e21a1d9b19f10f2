"""The report as one document rendered twice (report.md, report.html), `edgekd report RUN_DIR`, and the web
page opened in a real headless Chromium: no console error, not a blank screenshot, tables that sort."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from edgekd.records import ArtifactRecord, BudgetCheck, Candidate, LatencyCheck, RunMetrics, Sizing
from edgekd.report.blocks import BulletList, Code, Heading, Image, Paragraph, Table
from edgekd.report.markdown import render_markdown
from edgekd.report.sections import sizing_blocks
from edgekd.report.verdicts import budget_verdict, parity_verdict
from edgekd.report.webpage import WebPage, render_html

# ------------------------------------------------------------------------------------------- Chromium
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no `chromium` on PATH (Debian package `chromium`; .ci/run installs it)"
)
# Headless, as root (no sandbox), and offline: no first-run, sync, update or background requests, and every
# host name unresolvable, so that nothing on the page or in the browser can reach a network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
]
SCREEN = (1280, 2000)


def run_chromium(page: Path, *action: str) -> tuple[str, str]:
    """Open `page` with a fresh profile; its stdout (e.g. --dump-dom) and its log (stderr)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()]
        # Its own process group: on a timeout the browser's helper processes go too.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            return process.communicate(timeout=600)  # a ceiling against a hang only
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise


def console_messages(log: str) -> list[str]:
    """What the page wrote to its console, uncaught exceptions included. Chromium logs every message as
    INFO:CONSOLE, whatever its level; a report writes none, so each one is a failure."""
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def screenshot_ink(png: Path) -> tuple[float, int]:
    """The fraction of pixels that are not white, and the number of distinct colours."""
    pixels = np.asarray(PILImage.open(png).convert("RGB"))
    non_white = float((pixels.min(axis=2) < 245).mean())
    return non_white, len(np.unique(pixels.reshape(-1, 3), axis=0))


def assert_renders(page: Path, shot: Path) -> None:
    """The page loads without a console message and draws something: text, tables, plots."""
    _, log = run_chromium(page, f"--screenshot={shot}", f"--window-size={SCREEN[0]},{SCREEN[1]}")
    assert not console_messages(log), console_messages(log)
    assert shot.is_file(), log[-2000:]
    non_white, colours = screenshot_ink(shot)
    assert non_white > 0.05 and colours > 200, f"blank screenshot: {non_white:.1%} ink, {colours} colours"


def with_script(page_html: str, script: str) -> str:
    return page_html.replace("</body>", f"<script>{script}</script>\n</body>")


# ------------------------------------------------------------------------------------ documents, no run
def small_page(blocks) -> WebPage:
    return WebPage(blocks=blocks, verdicts=[], appendix=[], images={})


def test_markdown_renders_each_block_with_a_blank_line_between():
    blocks = [
        Heading(1, "edgekd run `x`"),
        BulletList(("a", "b `c`")),
        Table.of(["model", "acc"], [["kd | main", "97.1"]]),
        Image("plot.png", "plot.png"),
        Paragraph("text"),
        Code("trtexec --onnx=a.onnx"),
    ]
    assert render_markdown(blocks) == (
        "# edgekd run `x`\n\n- a\n- b `c`\n\n| model | acc |\n|---|---|\n| kd \\| main | 97.1 |\n\n"
        "![plot.png](plot.png)\n\ntext\n\n```\ntrtexec --onnx=a.onnx\n```\n"
    )


def test_html_escapes_text_and_shows_code_spans_as_code():
    page = render_html(
        small_page(
            [
                Heading(1, "run `<x>`"),
                Paragraph("a <b> & `c<d`"),
                Table.of(["<th>"], [["<td> & 1"]]),
                Code("<not a tag>"),
            ]
        )
    )
    assert "a &lt;b&gt; &amp; <code>c&lt;d</code>" in page
    assert "<title>run &lt;x&gt;</title>" in page and "&lt;th&gt;" in page and "&lt;td&gt; &amp; 1" in page
    assert "<pre><code>&lt;not a tag&gt;</code></pre>" in page
    assert "<b>" not in page and "<not a tag>" not in page


def test_budget_verdict_shows_what_was_checked():
    latency = LatencyCheck(
        artifact="openvino int8",
        statistic="p50",
        batch=1,
        threads=1,
        limit_ms=0.05,
        measured_ms=0.041,
        predicted_ms=0.039,
        fits=True,
        verdict="fits",
    )
    ok = budget_verdict(
        BudgetCheck(params=19_800, budget=30_000, params_fit=True, latency=latency, fits=True)
    )
    assert ok.state == "pass"
    assert ok.details == (
        "params 19.80k / 30.00k: fits",
        "latency openvino int8 p50 @b1: 0.041 ms / 0.050 ms: fits (sizing predicted 0.039 ms)",
    )
    slow = latency.model_copy(update={"measured_ms": 0.0562, "fits": False, "verdict": "OVER by 12.3 %"})
    over = budget_verdict(BudgetCheck(params=19_800, latency=slow, fits=False))
    assert over.state == "fail" and over.details[0] == "params 19.80k (no parameter limit)"
    assert over.details[1].endswith("0.056 ms / 0.050 ms: OVER by 12.3 % (sizing predicted 0.039 ms)")
    assert budget_verdict(None).state == "neutral"


def artifact(name: str, status: str = "ok", **fields) -> ArtifactRecord:
    fmt, precision = name.split()
    return ArtifactRecord(
        name=name, format=fmt, precision=precision, path=None, size_bytes=None, status=status, **fields
    )


def test_parity_verdict_lists_failures_and_what_was_not_built():
    built = [artifact("pytorch fp32"), artifact("onnx fp32"), artifact("openvino int8")]
    skipped = artifact("tensorrt fp16", "not built: needs TensorRT and a CUDA GPU")
    passed = parity_verdict([*built, skipped])
    assert passed.state == "pass" and passed.headline == "all 2 artifacts within tolerance"
    assert passed.details == ("not built: tensorrt fp16 (needs TensorRT and a CUDA GPU)",)
    failed = artifact("onnx int8", "parity failed", parity={"failure": "top-1 agreement 0.71 < 0.8"})
    verdict = parity_verdict([*built, failed])
    assert verdict.state == "fail" and verdict.headline == "1 of 3 artifacts outside tolerance: onnx int8"
    assert verdict.details == ("onnx int8: top-1 agreement 0.71 < 0.8",)
    assert parity_verdict([built[0], skipped]).state == "neutral"
    assert parity_verdict([built[0]]).headline == "no artifacts exported"


SIZING = Sizing(
    target={
        "backend": "openvino",
        "precision": "int8",
        "batch": 1,
        "threads": 1,
        "statistic": "p50",
        "limit_ms": 0.05,
    },
    rule="largest",
    chosen="resnet8 with width=16",
    candidates=[
        Candidate(
            member="resnet8 with width=16",
            model="resnet8",
            model_args={"width": 16},
            params=78_000,
            flops=1_500_000,
            latency_ms=0.043,
            source="measured",
            fits=True,
        ),
        Candidate(
            member="resnet14 with width=16",
            model="resnet14",
            model_args={"width": 16},
            params=175_000,
            flops=3_000_000,
            latency_ms=None,
            source="inferred",
            fits=False,
            note="deeper than resnet8 with width=32, which is over the limit",
        ),
    ],
    measured=1,
    cached=0,
    inferred=1,
    time_s=3.25,
    cache_file=None,
    fingerprint={},
)


def test_student_sizing_section_shows_in_both_files():
    blocks = sizing_blocks(SIZING)
    markdown = render_markdown(blocks)
    assert markdown.startswith(
        "## Student sizing\n\nTarget: openvino int8, p50 latency at batch 1 on 1 thread,"
    )
    assert (
        "chosen `resnet8 with width=16` in 3.2 s" in markdown and "inferred from a timed member" in markdown
    )
    assert "| member | params | FLOPs | latency ms | source | fits | note |" in markdown
    assert "| resnet8 with width=16 (chosen) | 78.00k | 1.50M | 0.043 | measured | fits | - |" in markdown
    assert "| resnet14 with width=16 | 175.00k | 3.00M | - | inferred | OVER | deeper than" in markdown
    page = render_html(small_page(blocks))
    assert '<h2 id="student-sizing">Student sizing</h2>' in page
    assert "<td>resnet8 with width=16 (chosen)</td>" in page and '<td class="num">0.043</td>' in page
    assert sizing_blocks(None) == []


# ------------------------------------------------------------------------------------ Chromium, no run
SORTED_CELLS = ["19.8k", "-", "97.49 ± 0.31", "0.043", "1.2 MB", "−3", "resnet8", "2", ""]
RECORD_ORDER = (
    "var header = document.querySelector('th');"
    "function order() { return Array.prototype.map.call(document.querySelectorAll('tbody td'),"
    " function (cell) { return cell.textContent; }).join('|'); }"
    "header.click(); document.body.setAttribute('data-ascending', order());"
    "header.click(); document.body.setAttribute('data-descending', order());"
)


@needs_chromium
def test_tables_sort_numbers_numerically_in_chromium(tmp_path):
    page = render_html(small_page([Heading(1, "sort"), Table.of(["value"], [[c] for c in SORTED_CELLS])]))
    path = tmp_path / "sort.html"
    path.write_text(with_script(page, RECORD_ORDER))
    dom, log = run_chromium(path, "--dump-dom")
    assert not console_messages(log), console_messages(log)
    ascending = html.unescape(re.search(r'data-ascending="([^"]*)"', dom).group(1)).split("|")
    descending = html.unescape(re.search(r'data-descending="([^"]*)"', dom).group(1)).split("|")
    numbers = ["−3", "0.043", "2", "97.49 ± 0.31", "19.8k", "1.2 MB"]
    assert ascending[:7] == [*numbers, "resnet8"] and set(ascending[7:]) == {"-", ""}
    assert descending[:7] == ["resnet8", *numbers[::-1]] and set(descending[7:]) == {"-", ""}


@needs_chromium
def test_the_chromium_check_fails_on_a_broken_script_and_on_a_blank_page(tmp_path):
    """The check of the real report below could pass by never looking: here it must fail."""
    page = render_html(small_page([Heading(1, "a report"), Paragraph("some text")]))
    broken = tmp_path / "broken.html"
    broken.write_text(with_script(page, "undefinedFunction();"))
    with pytest.raises(AssertionError, match="Uncaught ReferenceError: undefinedFunction is not defined"):
        assert_renders(broken, tmp_path / "broken.png")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>")
    with pytest.raises(AssertionError, match="blank screenshot"):
        assert_renders(blank, tmp_path / "blank.png")


# ---------------------------------------------------------------------------------------- bad run folders
def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output
    return result.output


def test_report_refuses_what_is_not_a_finished_run_folder(cli, tmp_path):
    assert "does not exist; allowed: a finished run folder" in one_line_error(
        cli("report", tmp_path / "nope")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no metrics.json; allowed: a finished run folder of `edgekd build`" in one_line_error(
        cli("report", empty)
    )
    (empty / "metrics.json").write_text('{"version": 99}\n')
    assert "no history.json" in one_line_error(cli("report", empty))
    (empty / "history.json").write_text("{}\n")
    (empty / "recipe.yaml").write_text("name: other\n")
    assert "not a metrics.json of this edgekd version" in one_line_error(cli("report", empty))
    assert not (empty / "report.md").exists() and not (empty / "report.html").exists()


# ---------------------------------------------------------------------------------------- a real run
RUN_RECIPE_CHANGES = {
    "distill": {"method": "kd"},
    "export": {"targets": {"onnx": ["fp32"]}},
    "benchmark": {
        "batches": [1],
        "threads": 1,
        "warmup_iters": 2,
        "warmup_s": 0.0,
        "min_iters": 5,
        "min_time_s": 0.0,
    },
    "report": {"embedding": True, "embedding_points": 60},
}
REPORT_FILES = ["report.md", "report.html", "history.csv", "bench.csv"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real tiny build with an ONNX artifact, timed, and the embedding plot."""
    from click.testing import CliRunner
    from conftest import TINY_RECIPE

    from edgekd.cli import main

    root = tmp_path_factory.mktemp("html")
    recipe = {**TINY_RECIPE, **RUN_RECIPE_CHANGES, "output_dir": str(root / "runs")}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "web page:" in result.output
    return root / "runs" / "tiny"


def plots_of(run_dir: Path) -> list[str]:
    return re.findall(r"^!\[[^\]]*\]\(([^)]+\.png)\)$", (run_dir / "report.md").read_text(), re.MULTILINE)


@pytest.mark.slow
def test_the_web_page_is_self_contained_and_has_the_verdicts(run_dir):
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page), "a reference outside the file"
    assert "http://" not in page and "https://" not in page and "@import" not in page
    plots = plots_of(run_dir)
    assert {"accuracy_vs_params.png", "training_curves.png", "embedding_tsne.png"} <= set(plots)
    for name in plots:
        data = base64.b64encode((run_dir / name).read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{data}"' in page, name
    verdicts = page.index('class="verdicts"')
    assert verdicts < page.index('id="models"') < page.index('id="recipe"') < page.index('id="plots"')
    assert "<strong>budget</strong>: the deployed student fits its budget" in page
    assert "<strong>parity</strong>: all 1 artifacts within tolerance" in page
    assert html.escape((run_dir / "recipe.yaml").read_text().rstrip("\n")) in page
    metrics = RunMetrics.load(run_dir / "metrics.json")
    for key in ("cpu", "torch_threads", "packages"):
        assert f"<td>{key}</td>" in page
    for name in [r.name for r in metrics.models] + ["onnx fp32 @b1"]:
        assert re.search(rf"<td>{re.escape(name)}( \(main\))?</td>", page), name
    assert page.count('<table class="sortable">') == 4  # models, data used, artifacts, environment


@pytest.mark.slow
def test_report_command_writes_the_same_files_again(cli, run_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("train", "models", "artifacts"))
    # The embedding plot is kept (its features are not stored); every other plot is drawn again.
    written = [*REPORT_FILES, *(p for p in plots_of(run_dir) if p != "embedding_tsne.png")]
    for name in written:
        (copy / name).unlink()
    result = cli("report", copy)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"report: {copy / 'report.md'}",
        f"web page: {copy / 'report.html'}",
    ]
    for name in written:
        assert (copy / name).read_bytes() == (run_dir / name).read_bytes(), name


@pytest.mark.slow
def test_report_command_names_the_run_folders_recipe_when_it_no_longer_loads(cli, run_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("train", "models", "artifacts"))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["teacher"] = {"model": "resnet8", "checkpoint": str(tmp_path / "moved.pt")}
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    error = one_line_error(cli("report", copy))
    assert f"{copy / 'recipe.yaml'}: teacher.checkpoint: '{tmp_path / 'moved.pt'}' does not exist" in error


@pytest.mark.slow
def test_report_command_shows_a_latency_budget_and_the_sizing_in_both_files(cli, run_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("train", "models", "artifacts"))
    metrics = RunMetrics.load(copy / "metrics.json")
    metrics.student_choice.sizing = SIZING
    metrics.budget_check = BudgetCheck(
        params=metrics.main.params,
        latency=LatencyCheck(
            artifact="onnx fp32",
            statistic="p50",
            batch=1,
            threads=1,
            limit_ms=0.01,
            measured_ms=0.0123,
            predicted_ms=None,
            fits=False,
            verdict="OVER by 23.0 %",
        ),
        fits=False,
    )
    (copy / "metrics.json").write_text(metrics.model_dump_json(indent=2))
    assert cli("report", copy).exit_code == 0
    markdown, page = (copy / "report.md").read_text(), (copy / "report.html").read_text()
    assert "## Student sizing" in markdown and '<h2 id="student-sizing">Student sizing</h2>' in page
    assert (
        "| resnet8 with width=16 (chosen) |" in markdown and "<td>resnet8 with width=16 (chosen)</td>" in page
    )
    assert '<div class="verdict fail">' in page and "the deployed student breaks its budget" in page
    assert "latency onnx fp32 p50 @b1: 0.012 ms / 0.010 ms: OVER by 23.0 %" in page


@pytest.mark.slow
@needs_chromium
def test_the_report_renders_in_chromium_without_errors(run_dir, tmp_path):
    assert_renders(run_dir / "report.html", tmp_path / "report.png")
