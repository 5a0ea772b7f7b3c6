"""The JSON Schemas of `validate` steps: what a manifest may hold, and the validator the
workers run, so a schema that validation accepts cannot hurt a worker.

- Only local references (`#/...`, `#anchor`): a remote `$ref` would make the worker fetch
  a URL of the manifest author's choosing (SSRF), so none is ever retrieved.
- No reference cycle that applies to the same value again (`$ref: '#'`, two `$defs`
  referring to each other through allOf...): it would recurse without end on any event.
  Recursion through `properties` or `items` descends into the event and is allowed.
- Patterns (`pattern`, `patternProperties`) run on RE2, which matches in linear time, so
  no pattern can backtrack for minutes on a hostile event (ReDoS). RE2 has no
  backreferences or lookaround; a pattern that needs them is refused here, with the
  reason, instead of being slow at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

import re2  # type: ignore[import-untyped]
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as Violation
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

# Keywords whose values are data, not schemas: a `$ref` inside `const` is just a string.
_DATA_KEYWORDS = frozenset({"const", "enum", "examples", "default"})
# Keywords applying a schema to the same value (not to a child of it): a cycle through
# them never reaches a leaf of the event.
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONE = ("not", "if", "then", "else")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 8 << 20  # a pattern whose program needs more is refused


@functools.lru_cache(maxsize=4096)
def safe_pattern(pattern: str) -> Any:
    """`pattern` compiled by RE2 (ValueError with the reason when RE2 refuses it)."""
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else err
        raise ValueError(
            f"pattern {pattern!r} is not supported ({reason}); patterns run on RE2: "
            "no backreferences or lookaround"
        ) from None


def check_event_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError naming the JSON pointer of the first problem of `schema`."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        where = _pointer(err.absolute_path)
        raise ValueError(f"not a valid JSON Schema at {where or '/'}: {err.message}") from None
    nodes = dict(_subschemas(schema, ""))
    anchors = {
        node[key]: pointer
        for pointer, node in nodes.items()
        for key in ("$anchor", "$dynamicAnchor")
        if isinstance(node.get(key), str)
    }
    uses_patterns = any("patternProperties" in node for node in nodes.values())
    for pointer, node in nodes.items():
        where = pointer or "/"
        if pointer and "$id" in node:
            raise ValueError(f"{where}: $id is only allowed at the top of the schema")
        for key in ("$ref", "$dynamicRef"):
            if key in node:
                _target(node[key], nodes, anchors, f"{pointer}/{key}")
        if isinstance(node.get("pattern"), str):
            _checked(node["pattern"], f"{pointer}/pattern")
        for pattern in node.get("patternProperties") or {}:
            _checked(pattern, f"{pointer}/patternProperties")
        if uses_patterns and "unevaluatedProperties" in node:
            raise ValueError(
                f"{where}: unevaluatedProperties cannot be combined with patternProperties "
                "(its pattern matching could not run on RE2)"
            )
    _refuse_cycles(nodes, anchors)


def _checked(pattern: str, where: str) -> None:
    try:
        safe_pattern(pattern)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _subschemas(node: Any, pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object inside `schema`, by JSON pointer."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                yield from _children(value, pointer + _pointer([key]))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _children(item, f"{pointer}/{i}")


def _children(value: Any, pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict | list):
        yield from _subschemas(value, pointer)


def _target(ref: Any, nodes: dict[str, Any], anchors: dict[str, str], where: str) -> str:
    """The pointer a local reference names; ValueError for a remote or dangling one."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ValueError(
            f"{where}: remote reference {ref!r} refused: only local references "
            "(#/$defs/name) are allowed, nothing is ever fetched"
        )
    fragment = unquote(ref[1:])
    pointer = fragment if fragment.startswith("/") or not fragment else anchors.get(fragment)
    if pointer is None or pointer not in nodes:
        raise ValueError(f"{where}: reference {ref!r} points at nothing in this schema")
    return pointer


def _in_place(
    node: dict[str, Any], pointer: str, nodes: dict[str, Any], anchors: dict[str, str]
) -> list[str]:
    """Subschemas applied to the same value as `node`."""
    out = [_target(node[k], nodes, anchors, pointer) for k in ("$ref", "$dynamicRef") if k in node]
    for key in _IN_PLACE_LISTS:
        out += [f"{pointer}/{key}/{i}" for i in range(len(node.get(key) or []))]
    out += [f"{pointer}/{key}" for key in _IN_PLACE_ONE if isinstance(node.get(key), dict)]
    out += [
        f"{pointer}/dependentSchemas/{_pointer([k])[1:]}"
        for k in node.get("dependentSchemas") or {}
    ]
    return [p for p in out if p in nodes]


def _refuse_cycles(nodes: dict[str, Any], anchors: dict[str, str]) -> None:
    edges = {p: _in_place(n, p, nodes, anchors) for p, n in nodes.items()}
    done: set[str] = set()
    for start in nodes:
        # Iterative depth-first search: the stack holds the path, so a cycle is named.
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = []
        if start in done:
            continue
        path.append(start)
        stack.append((start, iter(edges[start])))
        while stack:
            _, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                done.add(path.pop())
                stack.pop()
            elif nxt in path:
                cycle = " -> ".join(p or "#" for p in [*path[path.index(nxt) :], nxt])
                raise ValueError(
                    f"{path[-1] or '/'}: recursive reference applies the same schema to the "
                    f"same value without end ({cycle})"
                )
            elif nxt not in done:
                path.append(nxt)
                stack.append((nxt, iter(edges[nxt])))


def _pattern(validator: Validator, pattern: str, instance: Any, schema: Any) -> Iterator[Violation]:
    if validator.is_type(instance, "string") and not safe_pattern(pattern).search(instance):
        shown = instance if len(instance) <= 80 else instance[:77] + "..."
        yield Violation(f"{shown!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Violation]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if safe_pattern(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: Any
) -> Iterator[Violation]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = [safe_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in declared and not any(p.search(k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield Violation(
            f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)))})"
        )


EventValidator = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def _never_fetch(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


def event_validator(schema: dict[str, Any]) -> Validator:
    """The validator workers run for a `validate` step: RE2 patterns, no retrieval."""
    return EventValidator(schema, registry=Registry(retrieve=_never_fetch))  # type: ignore[call-arg]


def first_violation(validator: Validator, event: Any) -> str | None:
    """Why `event` fails the schema (the event path and the message), or None."""
    try:
        error = next(iter(validator.iter_errors(event)), None)
    except RecursionError:
        return "event nested too deeply to validate"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(event)"
    return f"schema validation failed at {where}: {error.message}"
