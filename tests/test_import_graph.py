"""edgekd's modules import each other without a circle, at module level and inside functions alike: a
circle makes import order matter and hides which module depends on which."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(tree: ast.AST) -> set[str]:
    """Every absolute import of the file, wherever it stands, except under `if TYPE_CHECKING:` (never run)."""
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if is_type_checking_block(child):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module)
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            pending.append(child)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the edgekd modules it imports (an import of a.b.c runs a.b's __init__ too)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for imported in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            parts = imported.split(".")
            targets.update(
                ".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in paths
            )
        targets.discard(name)
        # a package's own __init__ runs before its modules: an import of a parent package is no dependency back
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as the list of its modules, or None (depth-first search, white/grey/black)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_among_edgekd_modules():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking_blocks():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from edgekd.recipe import Recipe\n"
        "def f():\n    from edgekd.cli import main\n"
    )
    names = imported_names(tree)
    assert "edgekd.cli" in names and "edgekd.recipe" not in names


def test_the_recipe_schema_does_not_import_the_modules_that_use_it():
    graph = import_graph()
    schema = {"edgekd.recipe", *(name for name in graph if name.startswith("edgekd.config"))}
    users = {"edgekd.pipeline", "edgekd.deploy", "edgekd.train.trainer", "edgekd.cli"}
    reachable: set[str] = set()
    pending = list(schema)
    while pending:
        for target in graph[pending.pop()]:
            if target not in reachable:
                reachable.add(target)
                pending.append(target)
    assert not reachable & users
