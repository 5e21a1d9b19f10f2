"""The terminal's two streams and the one-line messages every edgekd command ends with: `error: ...` on a bad
input or a failed check, and how to resume after an interruption. Shared by the command line and the
multi-process launcher, which print the same lines."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    # The message is data: a path or pattern holding [brackets] must not be read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def print_interrupted(how: str = "") -> None:
    err.print(
        f"[yellow]interrupted[/]{' ' + escape(how) if how else ''}: completed epochs are saved; run the same "
        "command with --resume to continue",
        soft_wrap=True,
    )
