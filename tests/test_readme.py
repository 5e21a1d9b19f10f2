"""The README's two commands are the project's contract: CI must run exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_the_quickstart_and_the_test_command():
    quickstart, tests = readme_commands()[:2]
    assert quickstart.endswith("edgekd build recipes/quickstart.yaml") and "pip install" in quickstart
    assert "pip install" in tests and "[dev]" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci_script.splitlines()
