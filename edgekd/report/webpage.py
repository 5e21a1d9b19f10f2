"""The report's blocks as one self-contained web page (report.html): the verdicts first, then the report's
sections, the recipe, the environment and the plots.

Self-contained means it opens from a mail attachment or an air-gapped device: the plots are embedded as
base64 data URIs, the style and the table sorting are inline, and nothing is fetched from a network.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

from edgekd.report.blocks import Block, BulletList, Code, Heading, Image, Paragraph, Table
from edgekd.report.verdicts import Verdict


@dataclass(frozen=True)
class WebPage:
    blocks: list[Block]  # the report's sections; its images are shown last, with the plots
    verdicts: list[Verdict]
    appendix: list[Block]  # what only the page shows (the recipe, the environment), before the plots
    images: dict[str, bytes]  # PNG bytes of every Image block, by file name


def render_html(page: WebPage) -> str:
    title, sections = split_title(page.blocks)
    plots = [block for block in sections if isinstance(block, Image)]
    text = [block for block in sections if not isinstance(block, Image)]
    body = [
        html_block(title, page.images) if title else "",
        verdict_box(page.verdicts),
        *(html_block(block, page.images) for block in [*text, *page.appendix]),
        '<h2 id="plots">Plots</h2>' if plots else "",
        *(html_block(block, page.images) for block in plots),
    ]
    page_title = html.escape(title.text.replace("`", "") if title else "edgekd report")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{page_title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + f"\n</main>\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n"
    )


def split_title(blocks: list[Block]) -> tuple[Heading | None, list[Block]]:
    """The report's title heading (the verdicts go right below it) and the blocks after it."""
    if blocks and isinstance(blocks[0], Heading) and blocks[0].level == 1:
        return blocks[0], blocks[1:]
    return None, blocks


def verdict_box(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return ""
    items = "\n".join(verdict_item(verdict) for verdict in verdicts)
    return f'<section class="verdicts" aria-label="verdicts">\n{items}\n</section>'


def verdict_item(verdict: Verdict) -> str:
    mark = {"pass": "✔", "fail": "✘", "neutral": "–"}[verdict.state]
    details = "".join(f"<li>{inline(line)}</li>" for line in verdict.details)
    return (
        f'<div class="verdict {verdict.state}">'
        f'<p><span class="mark">{mark}</span> <strong>{html.escape(verdict.topic)}</strong>: '
        f"{inline(verdict.headline)}</p>" + (f"<ul>{details}</ul>" if details else "") + "</div>"
    )


def html_block(block: Block, images: dict[str, bytes]) -> str:
    match block:
        case Heading(level, text):
            return f'<h{level} id="{anchor(text)}">{inline(text)}</h{level}>'
        case Paragraph(text):
            return f"<p>{inline(text)}</p>"
        case BulletList(items):
            return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>"
        case Table():
            return html_table(block)
        case Image(file, alt):
            return html_image(file, alt, images[file])
        case Code(text):
            return f"<pre><code>{html.escape(text)}</code></pre>"
    raise TypeError(f"not a report block: {block!r}")


def html_table(table: Table) -> str:
    numeric = numeric_columns(table)
    caption = f"<caption>{inline(table.caption)}</caption>" if table.caption else ""
    head = "".join(
        f'<th scope="col"{numeric_class(i, numeric)} title="click to sort">{inline(c)}</th>'
        for i, c in enumerate(table.columns)
    )
    rows = "\n".join(
        "<tr>"
        + "".join(f"<td{numeric_class(i, numeric)}>{inline(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in table.rows
    )
    return (
        f'<div class="scroll"><table class="sortable">{caption}<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody></table></div>"
    )


# A cell that starts with a number ("97.49 ± 0.31", "19.8k", "+0.28", "−0.39").
NUMERIC_CELL = re.compile(r"^[+\-−]?(\d|\.\d)")


def numeric_columns(table: Table) -> set[int]:
    """The columns whose every filled cell is a number: right-aligned, so that their digits line up."""
    filled = [
        [row[i] for row in table.rows if i < len(row) and row[i] not in ("", "-")]
        for i in range(len(table.columns))
    ]
    return {i for i, cells in enumerate(filled) if cells and all(NUMERIC_CELL.match(c) for c in cells)}


def numeric_class(column: int, numeric: set[int]) -> str:
    return ' class="num"' if column in numeric else ""


def html_image(file: str, alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(file)}</figcaption></figure>"
    )


CODE_SPAN = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    """Escaped text, with its `backtick` spans as code."""
    return CODE_SPAN.sub(r"<code>\1</code>", html.escape(text))


def anchor(text: str) -> str:
    """A heading's id, so that a section can be linked to: 'Deployment artifacts' -> deployment-artifacts."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1a1a1a; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: 0.9em; }
code { background: #f0f2f4; padding: 0.05em 0.3em; border-radius: 3px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.8rem 1rem; max-height: 36rem;
  overflow: auto; }
pre code { background: none; padding: 0; }
.scroll { overflow-x: auto; margin: 0.8rem 0; }
table { border-collapse: collapse; font-size: 0.9rem; }
caption { caption-side: bottom; text-align: left; color: #57606a; padding-top: 0.3rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; white-space: nowrap; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eef1f4; cursor: pointer; user-select: none; }
thead th:hover, thead th:focus { background: #dde3e9; }
thead th[aria-sort="ascending"]::after { content: " ▲"; }
thead th[aria-sort="descending"]::after { content: " ▼"; }
tbody tr:nth-child(even) { background: #f8f9fa; }
.verdicts { display: flex; flex-wrap: wrap; gap: 1rem; margin: 0 0 1.5rem; }
.verdict { flex: 1 1 22rem; border: 2px solid; border-radius: 8px; padding: 0.4rem 1rem; }
.verdict p { margin: 0.3rem 0; font-size: 1.05rem; }
.verdict ul { margin: 0.2rem 0 0.4rem; padding-left: 1.2rem; }
.verdict.pass { border-color: #1a7f37; background: #e9f7ee; }
.verdict.pass .mark { color: #1a7f37; }
.verdict.fail { border-color: #c62828; background: #fdecec; }
.verdict.fail .mark { color: #c62828; }
.verdict.neutral { border-color: #8c959f; background: #f3f4f6; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.85rem; }
"""

# Click a header to sort by that column (again: the other way). A cell that starts with a number sorts by
# it, its unit applied ("97.49 ± 0.31", "19.8k", "1.2 MB", "+2.65 [-0.39, +5.70]"); numbers come before
# text; empty and "-" cells stay last in either direction. The sort is stable.
SORT_SCRIPT = r"""
(function () {
  "use strict";
  var UNITS = { k: 1e3, M: 1e6, G: 1e9, B: 1, kB: 1024, MB: 1048576, GB: 1073741824 };
  var NUMBER = /^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(kB|MB|GB|k|M|G|B)?(?![A-Za-z])/;

  function sortKey(cell) {
    var text = cell.textContent.trim().replace(/\u2212/g, "-");
    if (text === "" || text === "-") { return null; }
    var match = NUMBER.exec(text);
    if (!match) { return text.toLowerCase(); }
    return parseFloat(match[1]) * (match[2] ? UNITS[match[2]] : 1);
  }

  function compareKeys(a, b) {
    if (typeof a !== typeof b) { return typeof a === "number" ? -1 : 1; }
    return a < b ? -1 : (a > b ? 1 : 0);
  }

  function sortTable(table, column, header) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (row) {
      var cell = row.cells[column];
      return { row: row, key: cell ? sortKey(cell) : null };
    });
    rows.sort(function (x, y) {
      if (x.key === null || y.key === null) { return (x.key === null) - (y.key === null); }
      var order = compareKeys(x.key, y.key);
      return ascending ? order : -order;
    });
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (entry) { body.appendChild(entry.row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.addEventListener("click", function () { sortTable(table, column, header); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column, header); }
      });
    });
  });
})();
"""
