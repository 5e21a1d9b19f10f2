"""The report as data: a list of typed blocks, built once (report/sections.py) and rendered twice, as
report.md (report/markdown.py) and report.html (report/webpage.py), so that a section added to the list
appears in both files.

Text in a heading, paragraph, list item or table cell is plain text in which `backticks` mark code; each
renderer escapes the rest for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int  # 1 is the report's title
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str | None = None

    @classmethod
    def of(cls, columns: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
        """A table from the list-of-lists rows that report/tables.py builds."""
        return cls(tuple(columns), tuple(tuple(row) for row in rows), caption)


@dataclass(frozen=True)
class Image:
    file: str  # a PNG in the run folder, by name
    alt: str


@dataclass(frozen=True)
class Code:
    text: str  # shown verbatim: a command line, a file


Block = Heading | Paragraph | BulletList | Table | Image | Code
