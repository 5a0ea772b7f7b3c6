"""Generate the Pipeline CustomResourceDefinition from the pydantic models.

The apiserver wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no
`anyOf` that changes type, nullable handled by omission. pydantic emits JSON Schema
2020-12, so this module rewrites one into the other and keeps every description, so
`kubectl explain pipeline.spec.steps` shows the docstrings of the models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from flowmill.spec import GROUP, KIND, PLURAL, VERSION, PipelineSpec, PipelineStatus
from flowmill.spec.common import DURATION_PATTERN

CRD_NAME = f"{PLURAL}.{GROUP}"
ROOT = Path(__file__).resolve().parent.parent
CRD_PATHS = (
    ROOT / "k8s" / "crd" / f"{CRD_NAME}.yaml",
    ROOT / "charts" / "flowmill" / "crds" / f"{CRD_NAME}.yaml",
)

_DROP = {"title", "default", "$defs", "examples"}
# Lists keyed by `name` become list-type maps: the apiserver then enforces unique names
# and server-side apply merges entries by name instead of replacing the whole list.
_MAP_LIST_KEY = "name"


def structural_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, as a CRD needs it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    description = node.get("description")
    default = node.get("default")
    if default not in (None, [], {}, "") and description and "Default:" not in description:
        description = f"{description} Default: {_plain(default)}."
    for key, value in node.items():
        if key in _DROP or key == "description":
            continue
        if key == "properties":
            out["properties"] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        else:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if "properties" in out or out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
    if description and out.get("pattern") == DURATION_PATTERN:
        description += " A duration such as 500ms, 30s, 1m, 24h, 7d."
    if description:
        out["description"] = " ".join(description.split())
    out = _ordered(out)
    if out.get("type") == "array":
        items = out.get("items", {})
        if _MAP_LIST_KEY in items.get("required", []) and "x-kubernetes-list-type" not in out:
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = [_MAP_LIST_KEY]
    return out


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """type and description first, so the committed YAML reads top-down."""
    head = {k: node[k] for k in ("type", "description") if k in node}
    return head | {k: v for k, v in node.items() if k not in head}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and collapse `anyOf: [X, null]` (optional fields) into X."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            # A field's own docstring describes it better than its type's docstring.
            node = merged
            continue
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express a union in a structural schema: {node}")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**options[0], **rest}
            continue
        return node


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_crd() -> dict[str, Any]:
    """The full CustomResourceDefinition manifest."""
    spec_schema = structural_schema(PipelineSpec)
    status_schema = structural_schema(PipelineStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "flowmill",
                "app.kubernetes.io/part-of": "flowmill",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["pl", "fmp"],
                "categories": ["flowmill", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                            "description": "Whether every child of the Pipeline is ready.",
                        },
                        {
                            "name": "Phase",
                            "type": "string",
                            "jsonPath": ".status.phase",
                            "description": "Running, or Paused (spec.paused).",
                        },
                        {
                            "name": "Steps",
                            "type": "string",
                            "jsonPath": ".status.stepsReady",
                            "description": "Ready steps over all steps.",
                        },
                        {
                            "name": "Lag",
                            "type": "integer",
                            "jsonPath": ".status.lag",
                            "description": "Total consumer lag across steps, in messages.",
                        },
                        {
                            "name": "Tables",
                            "type": "string",
                            "jsonPath": ".status.tablesState",
                            "description": "Whether the serving tables answer exactly: exact, "
                            "rebuilding, incomplete or unknown.",
                        },
                        {
                            "name": "Reason",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                            "description": "Why the Pipeline is (not) ready.",
                        },
                        {
                            "name": "Restarts",
                            "type": "integer",
                            "priority": 1,
                            "jsonPath": ".status.restarts",
                            "description": "Container restarts across the Pipeline's pods.",
                        },
                        {
                            "name": "Dead-Letters",
                            "type": "integer",
                            "priority": 1,
                            "jsonPath": ".status.deadLetters",
                            "description": "Records on the dead-letter topics.",
                        },
                        {
                            "name": "Degraded",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Degraded")].reason',
                            "description": "What needs a human (AsExpected when nothing does).",
                        },
                        {
                            "name": "Message",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
                            "description": "What is (not) ready, in words.",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A streaming pipeline: Kafka topics, the sources "
                            "that feed them, the steps that process them, and the API that "
                            "serves the results.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "APIVersion of this object.",
                                },
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as the YAML text committed under k8s/crd and the chart's crds/."""
    header = "# Generated by `flowmill crd` from flowmill/spec; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def write_crd_files() -> list[Path]:
    """Regenerate the committed CRD files and the manifest reference."""
    text = render_crd()
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    REFERENCE_PATH.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_PATH.write_text(render_reference())
    return [*CRD_PATHS, REFERENCE_PATH]


REFERENCE_PATH = ROOT / "docs" / "pipeline-reference.md"


def render_reference() -> str:
    """docs/pipeline-reference.md: every field of the manifest, from the same schema."""
    spec = structural_schema(PipelineSpec)
    lines = [
        "# Pipeline manifest reference",
        "",
        "Generated by `make crd` from the spec models in `flowmill/spec/`; do not edit by hand.",
        "`kubectl explain pipeline.spec` shows the same text on a cluster.",
        "",
        "```yaml",
        f"apiVersion: {GROUP}/{VERSION}",
        f"kind: {KIND}",
        "metadata: {name: my-pipeline}",
        "spec: ...",
        "```",
        "",
    ]
    _reference_section(lines, "spec", spec)
    return "\n".join(lines) + "\n"


def _reference_section(lines: list[str], path: str, node: dict[str, Any]) -> None:
    properties = node.get("properties", {})
    if not properties:
        return
    required = set(node.get("required", []))
    lines += [f"## `{path}`", "", node.get("description", ""), ""]
    lines += ["| field | type | description |", "|---|---|---|"]
    nested: list[tuple[str, dict[str, Any]]] = []
    for name, sub in properties.items():
        kind = _type_name(sub)
        flag = " (required)" if name in required else ""
        text = sub.get("description", "").replace("|", "\\|")
        if "enum" in sub:
            text += " One of: " + ", ".join(f"`{v}`" for v in sub["enum"]) + "."
        lines.append(f"| `{name}`{flag} | {kind} | {text} |")
        child = sub.get("items") if sub.get("type") == "array" else sub
        if isinstance(child, dict) and child.get("type") == "object":
            if isinstance(child.get("additionalProperties"), dict):
                child = child["additionalProperties"]
            suffix = "[]" if sub.get("type") == "array" else ""
            nested.append((f"{path}.{name}{suffix}", child))
    lines.append("")
    for child_path, child in nested:
        _reference_section(lines, child_path, child)


def _type_name(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_name(node['additionalProperties'])}"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    return str(kind)
