"""Reading a pipeline YAML file safely: bounded size, bounded alias expansion, line numbers.

A YAML alias (``*a``) refers back to an anchored node (``&a``). PyYAML builds each alias as a
reference to the same object, so a "billion laughs" file (nine levels of ten aliases each, under
1 KB) loads in microseconds, but everything that later walks the data as a tree (pydantic
validation, hashing the config to JSON) expands it to 10^9 nodes: an 847-byte file grew to 8 GB.
So before anything is constructed, the node graph is measured as the tree it stands for: more
than ``MAX_NODES`` nodes or ``MAX_SCALAR_CHARS`` characters of scalars once aliases are expanded,
a recursive alias, or nesting deeper than ``MAX_DEPTH`` is refused with one line saying so. The
measurement visits each distinct node once (memoised), so it costs O(file size).

Also refused: files over ``MAX_FILE_BYTES`` (read no further than that), and a key repeated in one
mapping (PyYAML would keep the last silently). Only the safe loader is used: no YAML tag can
construct a Python object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A pipeline file is a few KB; one of 1 MiB is already a generated file gone wrong.
MAX_FILE_BYTES = 1 << 20
# Limits of the document once aliases are expanded (a legitimate file is far below both).
MAX_NODES = 100_000
MAX_SCALAR_CHARS = 8 << 20
MAX_DEPTH = 64


class YamlLimitError(ValueError):
    """The file is too large, too deep, or expands beyond the limits; the message says which."""


def read_limited(path: Path) -> str:
    """The file's text, refusing files over MAX_FILE_BYTES without reading more than that."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YamlLimitError(f"the file is larger than {MAX_FILE_BYTES:,} bytes; a pipeline file is a few KB "
                             "(is this the right file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlLimitError(f"the file is not UTF-8 text (byte {e.start}: {e.reason})") from None


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def check_expansion(root: yaml.Node | None) -> None:
    """Raise YamlLimitError if the document, aliases expanded, exceeds the limits above."""
    if root is None:
        return
    size: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, scalar chars, height) of its expansion
    on_path: set[int] = set()
    # Iterative post-order walk: deep nesting must not hit Python's recursion limit here.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, expanded = stack.pop()
        key = id(node)
        if expanded:
            on_path.discard(key)
            nodes, chars, height = 1, 0, 1
            for child in _children(node):
                n, c, h = size[id(child)]
                nodes, chars, height = nodes + n, chars + c, max(height, h + 1)
            if nodes > MAX_NODES:
                raise YamlLimitError(f"the document expands to more than {MAX_NODES:,} values once its aliases (*name) "
                                     f"are resolved ({_where(node)}); refused as an alias bomb")
            if chars > MAX_SCALAR_CHARS:
                raise YamlLimitError(f"the document expands to more than {MAX_SCALAR_CHARS:,} characters once its "
                                     f"aliases (*name) are resolved ({_where(node)}); refused as an alias bomb")
            if height > MAX_DEPTH:
                raise YamlLimitError(f"values nested more than {MAX_DEPTH} levels deep once aliases are resolved "
                                     f"({_where(node)})")
            size[key] = (nodes, chars, height)
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlLimitError(f"a recursive alias at {_where(node)} (a node that contains itself)")
        if depth > MAX_DEPTH:
            raise YamlLimitError(f"values nested more than {MAX_DEPTH} levels deep at {_where(node)}")
        if isinstance(node, yaml.ScalarNode):
            size[key] = (1, len(node.value), 1)
            continue
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))
    _check_duplicate_keys(root)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_duplicate_keys(root: yaml.Node) -> None:
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, yaml.Node] = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in keys:
                        raise YamlLimitError(f"key {k.value!r} appears twice in one mapping ({_where(keys[k.value])} "
                                             f"and {_where(k)}); keep one")
                    keys[k.value] = k
        stack.extend(_children(node))


def load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose ``text`` (one YAML document), check its expansion, then construct it.

    Returns (node tree for line numbers, data). Raises yaml.YAMLError for syntax errors and
    YamlLimitError for the limits above.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlLimitError(f"values nested too deeply (more than {MAX_DEPTH} levels are refused)") from None
        check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a key path (e.g. a pydantic error location) through the node tree; a 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line
