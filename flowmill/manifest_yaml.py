"""YAML for manifests, with limits: a hostile file gets an error naming the line, never a
traceback, a hang or gigabytes of memory.

PyYAML's SafeLoader builds the node graph (composition) before any Python object exists,
so the limits are checked there, where an alias bomb is still a few shared nodes: the
size each node would have once its aliases were expanded, the nesting depth, the number
of aliases. Scalars are checked as they are constructed (integers within int64, floats
finite), and a mapping that repeats a key is refused instead of keeping the last value.
libyaml parses (its scanner also stops flow nesting at 1,000 levels); PyYAML's Python
composer builds the nodes, because libyaml's own composer is C code where none of these
limits can be put.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import yaml
from yaml._yaml import CParser
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

MAX_BYTES = 1024 * 1024
"""Largest manifest accepted (the apiserver's own object limit is about 1.5 MiB)."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists."""
MAX_ALIASES = 100
"""Most `*alias` references in one document."""
MAX_NODES = 50_000
"""Most nodes in one document with every alias expanded (what a consumer would walk)."""
MAX_INT = 2**63 - 1
"""Integers beyond int64 are refused: Kubernetes and Kafka store none larger."""
_MAX_INT_CHARS = 80
"""Longer integer literals are refused before int() is asked to parse them (Python
refuses past 4,300 digits, deep inside)."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ManifestYamlError(ValueError):
    """YAML that breaks a manifest limit or is not YAML; `where` is the line and column."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        # Any: libyaml's parser gives its own Mark type, with the same line and column.
        self.problem = problem
        self.where = (
            "(yaml)" if mark is None else f"(yaml) line {mark.line + 1}, column {mark.column + 1}"
        )
        super().__init__(f"{self.where}: {problem}")


class ManifestLoader(Composer, CParser, SafeConstructor, Resolver):
    """SafeLoader with the manifest limits: libyaml's parser produces the events,
    PyYAML's composer (first in the MRO, ahead of libyaml's) turns them into nodes."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._aliases = 0
        self._expanded = 0
        # Expanded size of each finished node, by identity: an alias adds its target's
        # whole size, so the running total is the document's size with aliases expanded.
        self._sizes: dict[int, int] = {}

    def compose_document(self) -> Node | None:
        self._aliases = self._expanded = 0
        self._sizes = {}
        return super().compose_document()

    def _grow(self, size: int, mark: Any) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            raise ManifestYamlError(
                f"more than {MAX_NODES} values (each alias counted at its full size)", mark
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        mark = event.start_mark if event is not None else None
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ManifestYamlError(f"more than {MAX_ALIASES} aliases in one document", mark)
            target = super().compose_node(parent, index)
            if target is None or id(target) not in self._sizes:
                raise ManifestYamlError("an alias inside its own anchor (a cycle)", mark)
            self._grow(self._sizes[id(target)], mark)
            return target
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ManifestYamlError(f"nested deeper than {MAX_DEPTH} levels", mark)
        before = self._expanded
        self._grow(1, mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            raise ManifestYamlError("a value of no known kind", mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = str(node.value)
        if len(text) > _MAX_INT_CHARS:
            raise ManifestYamlError(f"integer of {len(text)} characters", node.start_mark)
        value: int = super().construct_yaml_int(node)
        if abs(value) > MAX_INT:
            raise ManifestYamlError(f"integer {text} is beyond int64", node.start_mark)
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ManifestYamlError(f"{node.value} is not a finite number", node.start_mark)
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base` keys may be overridden: that is what merging means
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key",
                    key_node.start_mark,
                )
            if key in seen:
                raise ManifestYamlError(
                    f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_yaml_int)  # type: ignore[type-var]
ManifestLoader.add_constructor("tag:yaml.org,2002:float", ManifestLoader.construct_yaml_float)  # type: ignore[type-var]


def decode_manifest(data: bytes | str) -> str:
    """Manifest bytes as text: UTF-8 only (a BOM is allowed), within MAX_BYTES."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_BYTES:
        raise ManifestYamlError(f"manifest of {size} bytes; at most {MAX_BYTES} are accepted")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestYamlError(
            f"not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start} (line {line})"
        ) from None


def load_yaml_documents(data: bytes | str) -> list[Any]:
    """Every document of a manifest file, within the limits above; ManifestYamlError
    (a ValueError) names the line of what broke one, and so does any YAML syntax error."""
    text = decode_manifest(data)
    loader = ManifestLoader(text)
    try:
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
        return documents
    except ManifestYamlError:
        raise
    except yaml.MarkedYAMLError as err:
        problem = " ".join(p for p in (err.context, err.problem) if p) or str(err)
        if "maximum nesting depth" in problem:  # libyaml's own limit, met while scanning ahead
            problem = f"nested deeper than {MAX_DEPTH} levels"
        raise ManifestYamlError(problem, err.problem_mark) from None
    except yaml.YAMLError as err:
        raise ManifestYamlError(str(err)) from None
    finally:
        loader.dispose()
