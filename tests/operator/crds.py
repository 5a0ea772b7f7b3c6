"""Minimal CRDs for the third-party kinds the operator writes (Strimzi KafkaTopic, KEDA
ScaledObject, Prometheus Operator PodMonitor).

The real definitions are thousands of lines; the apiserver only needs the names, the
served versions and a structural schema to store and validate these objects, and the
operator only needs what a real cluster gives it: the kinds exist, have a status
subresource, and accept the fields we write.
"""

from __future__ import annotations

from typing import Any

_OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(
    group: str,
    kind: str,
    plural: str,
    versions: list[str],
    *,
    short_names: list[str] | None = None,
    required: list[str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"spec": spec or _OPEN, "status": _OPEN},
    }
    if required:
        schema["required"] = required
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
    }
    if short_names:
        names["shortNames"] = short_names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": i == 0,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
                for i, version in enumerate(versions)
            ],
        },
    }


# Strimzi 0.49-0.51 serve both; 1.x only v1. Both here, so either setting can be tested.
KAFKA_TOPIC = _crd(
    "kafka.strimzi.io",
    "KafkaTopic",
    "kafkatopics",
    ["v1", "v1beta2"],
    short_names=["kt"],
    required=["spec"],
)
SCALED_OBJECT = _crd("keda.sh", "ScaledObject", "scaledobjects", ["v1alpha1"], short_names=["so"])


def _items(required: list[str], *optional: str) -> dict[str, Any]:
    """An array of objects with exactly these string fields (unknown ones are refused
    by a strict server-side apply)."""
    fields = {name: {"type": "string"} for name in [*required, *optional]}
    item = {"type": "object", "required": required, "properties": fields}
    return {"type": "array", "items": item}


# The two ways flowmill hands KEDA credentials, with the fields and required ones of
# KEDA's own CRD (config/crd/bases/keda.sh_triggerauthentications.yaml): secretTargetRef
# {parameter, name, key} and env {parameter, name, containerName?}; the rest stays open.
TRIGGER_AUTHENTICATION = _crd(
    "keda.sh",
    "TriggerAuthentication",
    "triggerauthentications",
    ["v1alpha1"],
    short_names=["ta"],
    spec={
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "secretTargetRef": _items(["parameter", "name", "key"]),
            "env": _items(["parameter", "name"], "containerName"),
        },
    },
)
POD_MONITOR = _crd("monitoring.coreos.com", "PodMonitor", "podmonitors", ["v1"])
PROMETHEUS_RULE = _crd("monitoring.coreos.com", "PrometheusRule", "prometheusrules", ["v1"])
SERVICE_MONITOR = _crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", ["v1"])

ALL = (
    KAFKA_TOPIC,
    SCALED_OBJECT,
    TRIGGER_AUTHENTICATION,
    POD_MONITOR,
    PROMETHEUS_RULE,
    SERVICE_MONITOR,
)
