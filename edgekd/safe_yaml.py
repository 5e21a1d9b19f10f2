"""YAML for recipes: data only, and bounded before anything is built from it.

``yaml.safe_load`` already refuses object tags; on top of it a recipe file is refused when it is larger than
MAX_BYTES, is not UTF-8, repeats a key within one mapping (the last one would silently win), nests deeper
than MAX_DEPTH, or expands through aliases to more than MAX_VALUES values (a "billion laughs" bomb is a few
hundred bytes that expand to billions). Size and expansion are measured on the composed node graph, before
any Python object is constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a recipe is a few kB
MAX_DEPTH = 32
MAX_VALUES = 100_000


class YamlRefused(ValueError):
    """The text is not a recipe we read: the message says why, in one line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlRefused(
                    f"line {line}: key '{key}' appears twice in one mapping (first at line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Python refuses int() of more than 4,300 digits with a ValueError; say so as the recipe's error."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise YamlRefused(
            f"line {node.start_mark.line + 1}: a number of {len(node.value):,} characters; allowed: a number "
            "of at most 4,300 digits"
        ) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml_file(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlRefused(
            f"the file is {size:,} bytes; allowed: at most {MAX_BYTES:,} (a recipe is a few kB)"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlRefused(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return load_yaml_text(text)


def load_yaml_text(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlRefused(f"nested too deeply (allowed: {MAX_DEPTH} levels)") from None
        if node is None:
            return None
        check_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_graph(root: yaml.Node) -> None:
    """Depth and expanded size of a composed document; aliases count every time they are used."""
    expanded: dict[int, int] = {}

    def visit(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels")
        if id(node) in expanded:
            return expanded[id(node)]
        count = 1
        if isinstance(node, yaml.SequenceNode):
            count += sum(visit(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            count += sum(visit(key, depth + 1) + visit(value, depth + 1) for key, value in node.value)
        if count > MAX_VALUES:
            raise YamlRefused(f"expands to more than {MAX_VALUES:,} values (through YAML aliases?)")
        expanded[id(node)] = count
        return count

    visit(root, 0)
