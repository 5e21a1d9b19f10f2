"""The report's blocks as Markdown (report.md): one block per paragraph, a blank line between blocks."""

from __future__ import annotations

from edgekd.report.blocks import Block, BulletList, Code, Heading, Image, Paragraph, Table
from edgekd.report.tables import markdown_table


def render_markdown(blocks: list[Block]) -> str:
    return "".join(markdown_block(block) + "\n\n" for block in blocks)[:-1]


def markdown_block(block: Block) -> str:
    match block:
        case Heading(level, text):
            return "#" * level + " " + text
        case Paragraph(text):
            return text
        case BulletList(items):
            return "\n".join(f"- {item}" for item in items)
        case Table(columns, rows, caption):
            table = markdown_table(list(columns), [list(row) for row in rows])
            return table if caption is None else f"{table}\n\n{caption}"
        case Image(file, alt):
            return f"![{alt}]({file})"
        case Code(text):
            return f"```\n{text}\n```"
    raise TypeError(f"not a report block: {block!r}")
