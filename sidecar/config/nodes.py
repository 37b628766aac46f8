"""Typed reading of composed YAML nodes, collecting every issue with its file, line and path.

Theory of operation: the loader composes each YAML document into a node tree (never into plain
Python objects), so every value still knows the line it came from. Parsers walk that tree through
`Node` and `Fields`: each accessor either returns a typed value or records a `ConfigIssue` naming
the file, the line, the object, the field path and the reason, and returns a fallback so parsing
goes on and reports *all* problems in one pass. `Fields.finish()` turns every key nobody read into
a warning, so unimplemented fields are never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from sidecar.errors import ConfigIssue, Severity

T = TypeVar("T")

# Frozen form of arbitrary YAML data: mappings become sorted (key, value) pairs, lists tuples.
Frozen = str | int | float | bool | None | tuple[Any, ...]

_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}


@dataclass
class Document:
    """Where issues of one YAML document go, and the object identity once it is known."""

    file: str
    issues: list[ConfigIssue]
    obj: str = ""
    constructor: SafeConstructor = field(default_factory=SafeConstructor)

    def add(self, severity: Severity, line: int | None, path: str, reason: str) -> None:
        self.issues.append(ConfigIssue(severity, self.file, self.obj, path, reason, line))


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, node.tag)


class Node:
    """One YAML node with its field path; typed accessors record issues instead of raising."""

    __slots__ = ("doc", "node", "path")

    def __init__(self, node: yaml.Node, path: str, doc: Document) -> None:
        self.node = node
        self.path = path
        self.doc = doc

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, reason: str) -> None:
        self.doc.add(Severity.ERROR, self.line, self.path, reason)

    def warn(self, reason: str) -> None:
        self.doc.add(Severity.WARNING, self.line, self.path, reason)

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == "tag:yaml.org,2002:null"

    def _wrong(self, expected: str) -> None:
        self.error(f"expected {expected}, got {_describe(self.node)}")

    def fields(self) -> Fields | None:
        """This node as a mapping of string keys (duplicates and non-string keys are errors)."""
        if not isinstance(self.node, yaml.MappingNode):
            self._wrong("a mapping")
            return None
        out: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in self.node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag.endswith(":str")):
                Node(key_node, self.path, self.doc).error(
                    f"mapping key must be a string, got {_describe(key_node)}"
                )
                continue
            key = str(key_node.value)
            child = Node(value_node, self.child_path(key), self.doc)
            if key in out:
                Node(key_node, child.path, self.doc).error(
                    f"duplicate key (first on line {key_lines[key]})"
                )
                continue
            out[key] = child
            key_lines[key] = int(key_node.start_mark.line) + 1
        return Fields(self, out, key_lines)

    def items(self) -> list[Node]:
        """This node as a list (null is an empty list)."""
        if self.is_null:
            return []
        if not isinstance(self.node, yaml.SequenceNode):
            self._wrong("a list")
            return []
        return [Node(n, self.child_path(i), self.doc) for i, n in enumerate(self.node.value)]

    def _scalar(self, tag: str) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == tag

    def string(self) -> str | None:
        if self._scalar("tag:yaml.org,2002:str"):
            return str(self.node.value)
        self._wrong("a string")
        return None

    def integer(self) -> int | None:
        if self._scalar("tag:yaml.org,2002:int"):
            assert isinstance(self.node, yaml.ScalarNode)
            return int(self.doc.constructor.construct_yaml_int(self.node))
        self._wrong("an integer")
        return None

    def boolean(self) -> bool | None:
        if self._scalar("tag:yaml.org,2002:bool"):
            assert isinstance(self.node, yaml.ScalarNode)
            return bool(self.doc.constructor.construct_yaml_bool(self.node))
        self._wrong("a boolean")
        return None

    def int_or_string(self) -> int | str | None:
        if self._scalar("tag:yaml.org,2002:int"):
            return self.integer()
        if self._scalar("tag:yaml.org,2002:str"):
            return str(self.node.value)
        self._wrong("an integer or a string")
        return None

    def port(self) -> int | None:
        """A TCP/UDP port number 1..65535."""
        value = self.integer()
        if value is not None and not 1 <= value <= 65535:
            self.error(f"port {value} is not in 1..65535")
            return None
        return value

    def string_list(self) -> tuple[str, ...]:
        out = (item.string() for item in self.items())
        return tuple(s for s in out if s is not None)

    def frozen(self) -> Frozen:
        """The node's data, frozen: mappings as sorted (key, value) pairs, lists as tuples."""
        try:
            value = self.doc.constructor.construct_document(self.node)
        except ConstructorError as exc:
            self.error(f"cannot read value: {exc.problem}")
            return None
        return freeze(value)


def freeze(value: Any) -> Frozen:
    """Plain YAML data -> hashable, immutable data."""
    if isinstance(value, dict):
        return tuple(sorted(((str(k), freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class Fields:
    """A mapping being read: take fields by name; `finish()` reports the ones nobody took."""

    __slots__ = ("_taken", "key_lines", "node", "values")

    def __init__(self, node: Node, values: dict[str, Node], key_lines: dict[str, int]) -> None:
        self.node = node
        self.values = values
        self.key_lines = key_lines
        self._taken: set[str] = set()

    def get(self, key: str) -> Node | None:
        """The field's node, or None when absent or null."""
        self._taken.add(key)
        child = self.values.get(key)
        if child is None or child.is_null:
            return None
        return child

    def require(self, key: str) -> Node | None:
        child = self.get(key)
        if child is None:
            self.node.doc.add(
                Severity.ERROR, self.node.line, self.node.child_path(key), "missing required field"
            )
        return child

    def read(self, key: str, conv: Callable[[Node], T | None], default: T) -> T:
        child = self.get(key)
        if child is None:
            return default
        value = conv(child)
        return default if value is None else value

    def read_required(self, key: str, conv: Callable[[Node], T | None]) -> T | None:
        child = self.require(key)
        return None if child is None else conv(child)

    def string(self, key: str, default: str = "") -> str:
        return self.read(key, Node.string, default)

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        child = self.get(key)
        if child is None:
            return default
        value = child.string()
        if value is None:
            return default
        if value not in allowed:
            child.error(f"{value!r} is not one of {', '.join(allowed)}")
            return default
        return value

    def finish(self, ignored: frozenset[str] = frozenset(), *, ignore_all: bool = False) -> None:
        """Warn about every field not read (except `ignored`, which do not concern a proxy)."""
        if ignore_all:
            return
        for key, child in self.values.items():
            if key not in self._taken and key not in ignored:
                self.node.doc.add(
                    Severity.WARNING,
                    self.key_lines[key],
                    child.path,
                    "field not implemented; ignored",
                )
