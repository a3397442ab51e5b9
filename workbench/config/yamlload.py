"""YAML loading that remembers where every value came from.

Validation errors must name the file *and line* of the offending value, which plain
``yaml.safe_load`` forgets. ``load_yaml`` builds ordinary Python data (safe tags only) plus a
map from each value's path (``("experiments", 2, "steps", 1, "weight")``) to its 1-based line,
and rejects duplicate keys, which PyYAML would otherwise silently overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from workbench.errors import WorkbenchError

Path_ = tuple[str | int, ...]
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass
class Located:
    """Parsed YAML data with the line of each value and of each mapping key."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    key_lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """Line of the value at ``path``, or of its nearest located ancestor."""
        for cut in range(len(path), -1, -1):
            prefix = tuple(path[:cut])
            if cut == len(path) and prefix in self.key_lines:
                return self.key_lines[prefix]
            if prefix in self.lines:
                return self.lines[prefix]
        return None


class YamlProblem(WorkbenchError, ValueError):
    """A file that is not well-formed YAML; ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


def load_yaml(text: str) -> Located:
    """Parse one YAML document, keeping line numbers; raise YamlProblem on bad syntax."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if "expected a single document" in str(exc):
                problem = "expected a single YAML document, found more than one ('---')"
            elif exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
            raise YamlProblem(f"YAML syntax error: {problem}", mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise YamlProblem(f"YAML syntax error: {exc}") from None
        located = Located(data=None)
        if node is not None:
            located.data = _build(loader, node, (), located, set())
        return located
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, out: Located, active: set[int]) -> Any:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in active:
        raise YamlProblem("YAML alias refers to itself (recursive structure)", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise YamlProblem(f"unsupported YAML tag {node.tag!r}", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        try:
            loader.flatten_mapping(node)  # resolve '<<' merge keys like safe_load does
        except yaml.MarkedYAMLError as exc:
            raise YamlProblem(f"YAML syntax error: {exc.problem}", node.start_mark.line + 1) from None
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(loader, key_node)
            if isinstance(key, list | dict) or not isinstance(key, str | int | float | bool | type(None)):
                raise YamlProblem("mapping keys must be plain values", key_node.start_mark.line + 1)
            if key in result:
                first = out.key_lines.get((*path, key))
                where = f" (first on line {first})" if first else ""
                raise YamlProblem(f"duplicate key '{key}'{where}", key_node.start_mark.line + 1)
            out.key_lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, (*path, key), out, active)
        active.discard(id(node))
        return result
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items = [_build(loader, item, (*path, i), out, active) for i, item in enumerate(node.value)]
        active.discard(id(node))
        return items
    return _scalar(loader, node)


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return [] if isinstance(node, yaml.SequenceNode) else {}
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(f"YAML error: {exc.problem}", node.start_mark.line + 1) from None
    except (ValueError, TypeError) as exc:  # e.g. an impossible timestamp like 2024-13-45
        raise YamlProblem(f"YAML value cannot be read: {exc}", node.start_mark.line + 1) from None
