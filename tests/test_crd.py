"""The committed CRD is generated from the spec models and documents every field."""

from __future__ import annotations

from typing import Any

from flowmill.crd import CRD_PATHS, REFERENCE_PATH, build_crd, render_crd, render_reference


def test_committed_crd_is_up_to_date() -> None:
    expected = render_crd()
    for path in CRD_PATHS:
        assert path.read_text() == expected, f"{path} is stale: run `make crd` and commit it"


def test_manifest_reference_is_up_to_date() -> None:
    assert REFERENCE_PATH.read_text() == render_reference(), "run `make crd` and commit it"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Paths of schema properties that have no description."""
    missing = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        if name not in ("apiVersion", "kind", "metadata") and not sub.get("description"):
            missing.append(here)
        missing += _walk(sub, here)
    if "items" in node:
        missing += _walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        missing += _walk(node["additionalProperties"], path + "{}")
    return missing


def test_every_field_is_described() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


def _untyped(node: dict[str, Any], path: str) -> list[str]:
    """Structural schemas type every node (free-form ones say so explicitly)."""
    bad = []
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        bad.append(path or "(root)")
    for name, sub in node.get("properties", {}).items():
        bad += _untyped(sub, f"{path}.{name}")
    if "items" in node:
        bad += _untyped(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        bad += _untyped(node["additionalProperties"], path + "{}")
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "$defs"):
        if forbidden in node:
            bad.append(f"{path} has {forbidden}")
    return bad


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _untyped(schema, "") == []


def test_named_lists_are_list_maps() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in ("topics", "sources", "steps"):
        assert spec["properties"][name]["x-kubernetes-list-type"] == "map"
        assert spec["properties"][name]["x-kubernetes-list-map-keys"] == ["name"]
