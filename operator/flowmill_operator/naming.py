"""Kubernetes names and labels of a Pipeline's children, in one place so that the
renderer, the pruner and the status reader always agree on them. Names that live in
Kafka (topics, consumer groups) and the workers' ports are the spec's
(flowmill.spec.topology, flowmill.spec.launch): the workers and `flowmill run` use them
too."""

from __future__ import annotations

import hashlib
import re

from flowmill.spec import API_VERSION, KIND

MANAGER = "flowmill-operator"
"""Field manager of every server-side apply, and the app.kubernetes.io/managed-by label."""

PIPELINE_LABEL = "flowmill.dev/pipeline"
PIPELINE_NAMESPACE_LABEL = "flowmill.dev/pipeline-namespace"
COMPONENT_LABEL = "flowmill.dev/component"
STEP_LABEL = "flowmill.dev/step"
SOURCE_LABEL = "flowmill.dev/source"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

SPEC_HASH_ANNOTATION = "flowmill.dev/spec-hash"
PDB_ANNOTATION = "flowmill.dev/pod-disruption-budgets"
"""Pipeline annotation ("true"/"false") overriding the operator's PDB setting."""
AUTOSCALER_ANNOTATION = "flowmill.dev/autoscaler"
"""Pipeline annotation ("hpa"/"keda") choosing the autoscaler for all its steps whose
autoscaling sets no kind, overriding the operator's setting."""

WORKER_CONTAINER = "worker"
"""The container of a source's or step's pod (KEDA's TriggerAuthentication reads its env)."""
CONFIG_MOUNT = "/etc/flowmill"
CONFIG_KEY = "pipeline.yaml"
PIPELINE_FILE = f"{CONFIG_MOUNT}/{CONFIG_KEY}"


def config_map(pipeline: str) -> str:
    return f"{pipeline}-spec"


def source_deployment(pipeline: str, source: str) -> str:
    return f"{pipeline}-source-{source}"


def step_deployment(pipeline: str, step: str) -> str:
    return f"{pipeline}-step-{step}"


def replay_job(pipeline: str, step: str, request_id: str) -> str:
    """The reset Job of one replay request: a new id is a new Job (a Job's pod template
    cannot change, and the old one's outcome belongs to the old request)."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:8]
    return f"{pipeline}-replay-{step}"[:54].rstrip("-") + f"-{digest}"


def api_deployment(pipeline: str) -> str:
    return f"{pipeline}-api"


_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


def kafka_topic_resource(pipeline: str, topic: str) -> str:
    """The KafkaTopic resource name of a topic.

    Prefixed with the Pipeline so two Pipelines declaring the same topic never fight over
    one resource (Strimzi reports the clash on the second). Kafka allows `_` and capitals,
    resource names do not: such names are lower-cased and get a short hash of the original,
    so `Trips` and `trips` still map to different resources.
    """
    cleaned = _NOT_DNS.sub("-", topic.lower()).strip(".-") or "topic"
    name = f"{pipeline}-{cleaned}"
    if cleaned != topic:
        name += "-" + hashlib.sha256(topic.encode()).hexdigest()[:6]
    return name[:253]


def owner_reference(name: str, uid: str) -> dict[str, object]:
    """The Pipeline as controller of a same-namespace child: garbage collection deletes
    the child with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_labels(pipeline: str, component: str, name: str | None = None) -> dict[str, str]:
    """The immutable Deployment selector: pipeline, component and step/source name."""
    labels = {PIPELINE_LABEL: pipeline, COMPONENT_LABEL: component}
    if component == "step" and name:
        labels[STEP_LABEL] = name
    elif component == "source" and name:
        labels[SOURCE_LABEL] = name
    return labels


def labels(pipeline: str, component: str, name: str | None = None) -> dict[str, str]:
    """Every child's labels: the selector labels plus the recommended app.kubernetes.io set."""
    return {
        "app.kubernetes.io/name": "flowmill",
        "app.kubernetes.io/instance": pipeline,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "flowmill",
        MANAGED_BY_LABEL: MANAGER,
        **selector_labels(pipeline, component, name),
    }


def child_selector(pipeline: str) -> str:
    """Label selector of every child of a Pipeline (within one namespace)."""
    return f"{PIPELINE_LABEL}={pipeline},{MANAGED_BY_LABEL}={MANAGER}"
