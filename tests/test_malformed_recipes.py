"""Every malformed recipe ends in one line on stderr that names the field or file, exit code 2, within a few
CPU seconds (not wall-clock seconds: the machine may be busy) and bounded memory, and leaves nothing behind:
`edgekd validate` and `edgekd build` alike.

The corpus is tests/malformed/*.yaml (each file's first line says what the error must name); the resource
bombs are generated here rather than stored. Every case runs in its own process (forked from a server that
has imported edgekd once; see cli_forkserver.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "malformed"
# Refusing a recipe needs the data set (digits) and meta-device models: nothing near this much memory.
PEAK_GROWTH_BYTES = 1 << 30

MODELS = """\
data: {dataset: digits, batch_size: 64}
teacher: {model: resnet8, train: {epochs: 1}}
student: {family: resnet, budget: {params: 20k}}
"""
BASE = MODELS + "train: {epochs: 1}\n"


def _alias_bomb(field_line: str, levels: int = 9) -> str:
    """A "billion laughs": nine levels of nine-fold aliases, 9^9 values from a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join([*lines, field_line.replace("{bomb}", f"*a{levels - 1}")])


def generated_cases() -> dict[str, tuple[str, bytes]]:
    """name -> (what the error must contain, the recipe's bytes)."""
    return {
        "bomb-alias-in-name": ("expands to more than", _alias_bomb("name: {bomb}\n" + BASE).encode()),
        "bomb-alias-in-classes": (
            "expands to more than",
            _alias_bomb("name: corpus\n" + BASE.replace("batch_size: 64", "classes: {bomb}")).encode(),
        ),
        "bomb-deep-nesting": ("nested", ("name: corpus\n" + BASE + "x: " + "[" * 3000 + "]" * 3000).encode()),
        "bomb-deep-mappings": (
            "nested",
            ("name: corpus\n" + BASE + "x: " + "{a: " * 3000 + "1" + "}" * 3000).encode(),
        ),
        "bomb-50-megabytes": (
            "allowed: at most",
            b"name: corpus\n" + BASE.encode() + b"#" * (50 << 20) + b"\n",
        ),
        "bomb-long-number": (
            "a number of 100,000 characters",
            ("name: corpus\n" + MODELS + "train: {epochs: " + "9" * 100_000 + "}\n").encode(),
        ),
        "bomb-long-name": ("name", ("name: " + "a" * 500_000 + "\n" + BASE).encode()),
        "binary-file": ("not UTF-8", b"name: \xff\xfe\x00\x01 binary\n" + bytes(range(256)) * 100),
        "binary-utf16": ("not UTF-8", ("name: corpus\n" + BASE).encode("utf-16")),
    }


def corpus_cases() -> dict[str, tuple[str, bytes]]:
    cases = {}
    for path in sorted(CORPUS.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <words>'"
        cases[path.stem] = (first.removeprefix("# expect: "), path.read_bytes())
    return cases


CASES = {**corpus_cases(), **generated_cases()}


def _tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")} | {
        str(path.relative_to(folder)) for path in folder.glob(".*")
    }


@pytest.mark.parametrize("command", ["validate", "build"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_recipe_is_one_line_exit_2(cli_processes, tmp_path, name, command):
    expect, text = CASES[name]
    (tmp_path / "recipe.yaml").write_bytes(text)
    before = _tree(tmp_path)
    result = cli_processes.run([command, "recipe.yaml"], tmp_path)

    assert not result["timed_out"], (
        f"{name}: still running after {result['cpu_seconds']:.0f} CPU seconds ({result['seconds']:.0f} s)"
    )
    stderr = result["stderr"]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result["exit"] == 2, f"{name}: exit {result['exit']}\n{stderr[-3000:]}"
    assert stderr.startswith("error: ") and stderr.endswith("\n") and stderr.count("\n") == 1, stderr[:2000]
    assert len(stderr) < 600, f"{name}: a {len(stderr):,}-character error"
    assert expect in stderr, f"{name}: the error does not name '{expect}': {stderr}"
    assert result["stdout"] == ""
    assert _tree(tmp_path) == before, f"{name}: {command} left {sorted(_tree(tmp_path) - before)}"
    growth = result["peak_rss_bytes"] - cli_processes.rss_bytes
    assert growth < PEAK_GROWTH_BYTES, f"{name}: peak memory grew by {growth / 2**20:,.0f} MiB"


def test_the_corpus_covers_every_section():
    sections = {"file", "yaml", "top", "name", "data", "teacher", "student", "distill", "train", "export"}
    sections |= {"bench", "report", "memory", "bomb", "binary"}
    assert {name.split("-")[0] for name in CASES} >= sections


@pytest.mark.parametrize("name", ["bomb-alias-in-name", "memory-teacher-weights"])
def test_the_installed_command_refuses_as_the_forked_one_does(tmp_path, name):
    """The same refusal through the real `edgekd` entry point, in a process of its own from the start."""
    import subprocess
    import sys

    expect, text = CASES[name]
    (tmp_path / "recipe.yaml").write_bytes(text)
    command = Path(sys.executable).with_name("edgekd")  # the console script pip installed beside python
    assert command.is_file(), f"edgekd is not installed beside {sys.executable}"
    result = subprocess.run(
        [str(command), "build", "recipe.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and expect in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recipe.yaml"]
