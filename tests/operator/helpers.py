"""Helpers for operator tests: example manifests, reading children, and standing in for
the two things this machine cannot run (Strimzi's topic operator and a kubelet).

Both stand-ins write status through the real apiserver exactly as the real component
would; everything downstream (the ReplicaSet and Deployment controllers counting ready
pods, the operator reading KafkaTopic conditions) is the real thing.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill_operator.naming import MANAGED_BY_LABEL, MANAGER, PIPELINE_LABEL
from tests.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
GROUP, VERSION, PLURAL = "flowmill.dev", "v1alpha1", "pipelines"
STRIMZI = ("kafka.strimzi.io", "v1", "kafkatopics")
CHILDREN_TIMEOUT = 60.0
"""How long a test waits for the operator's reaction (children, conditions): a bound for a
loaded machine (the suite on two cores saw over 15 s), not a speed target."""

CHILD_PATHS = (
    ("ConfigMap", "/api/v1"),
    ("Service", "/api/v1"),
    ("Deployment", "/apis/apps/v1"),
    ("HorizontalPodAutoscaler", "/apis/autoscaling/v2"),
    ("PodDisruptionBudget", "/apis/policy/v1"),
    ("KafkaTopic", "/apis/kafka.strimzi.io/v1"),
    ("ScaledObject", "/apis/keda.sh/v1alpha1"),
    ("TriggerAuthentication", "/apis/keda.sh/v1alpha1"),
    ("PodMonitor", "/apis/monitoring.coreos.com/v1"),
    ("Job", "/apis/batch/v1"),
)


def example_files() -> list[Path]:
    """Every example Pipeline: the test manifests (tests/data, tests/operator/pipelines)
    and whatever k8s/examples and its cluster variants hold."""
    files = [
        ROOT / "tests" / "data" / "design_sketch.yaml",
        ROOT / "tests" / "data" / "full_features.yaml",
    ]
    files += sorted((ROOT / "tests" / "operator" / "pipelines").glob("*.yaml"))
    # Not the `flowmill test` files beside them (k8s/examples/*.test.yaml).
    files += sorted(
        p for p in (ROOT / "k8s" / "examples").glob("*.yaml") if not p.name.endswith(".test.yaml")
    )
    return files


def pipeline_documents(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(path.read_text()):
        if isinstance(document, dict) and document.get("kind") == "Pipeline":
            yield document


def example_ids() -> list[str]:
    return [p.stem for p in example_files()]


def for_namespace(
    document: dict[str, Any], namespace: str, kafka_namespace: str | None = None
) -> dict[str, Any]:
    """A Pipeline manifest moved into a test namespace; a Kafka namespace in the spec is
    moved too, so cross-namespace topics stay cross-namespace."""
    body = copy.deepcopy(document)
    body["metadata"]["namespace"] = namespace
    # The spec models accept `retention.ms: 604800000` and make it a string; the CRD
    # schema (rightly: Kafka configs are strings) does not, and kubectl would refuse it.
    for topic in body["spec"].get("topics", []):
        if "config" in topic:
            topic["config"] = {k: _kafka_str(v) for k, v in topic["config"].items()}
    kafka = body["spec"].get("kafka") or {}
    if kafka.get("namespace"):
        kafka["namespace"] = kafka_namespace or kafka["namespace"]
    return body


class Cluster:
    """Thin typed access to the objects operator tests look at."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self.api = api_client
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.core = k8s_client.CoreV1Api(api_client)
        self.apps = k8s_client.AppsV1Api(api_client)
        self.autoscaling = k8s_client.AutoscalingV2Api(api_client)

    def create_namespace(self, name: str) -> None:
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as err:
            if err.status != 409:
                raise

    # -- Pipelines --------------------------------------------------------------------------

    def create_pipeline(self, body: dict[str, Any]) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))

    def pipeline(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )

    def patch_pipeline(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Replace the spec, as `kubectl apply` of an edited file would; retried when the
        operator wrote the object (status, annotations) between our read and write."""
        for _ in range(20):
            current = self.pipeline(namespace, name)
            current["spec"] = spec
            try:
                return dict(
                    self.custom.replace_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, current
                    )
                )
            except ApiException as err:
                if err.status != 409:
                    raise
        raise AssertionError(f"Pipeline {namespace}/{name} kept changing under the test")

    def delete_pipeline(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any] | None:
        status = self.pipeline(namespace, name).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == kind), None)

    def wait_condition(
        self, namespace: str, name: str, kind: str, status: str, timeout: float = CHILDREN_TIMEOUT
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.condition(namespace, name, kind)
            return found if found and found["status"] == status else None

        return wait_for(probe, timeout, f"{kind}={status} on Pipeline {namespace}/{name}")

    # -- children ---------------------------------------------------------------------------

    def _list(self, path: str, selector: str) -> list[dict[str, Any]]:
        # Raw JSON, not the client's models: tests poll this in a loop, and model
        # deserialisation would hold the GIL the in-process operator needs.
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, query_params=[("labelSelector", selector)], auth_settings=["BearerToken"]
        )
        response = self.api.call_api(method, url, headers, body, post)
        if response.status == 404:
            return []
        return list(json.loads(response.read())["items"])

    def children(self, namespace: str, pipeline: str) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every object labelled as the Pipeline's in
        `namespace`, of every kind the operator writes (KEDA's own HPA excluded)."""
        return self.children_by_pipeline(namespace, f"{PIPELINE_LABEL}={pipeline}").get(
            pipeline, set()
        )

    def children_by_pipeline(
        self, namespace: str, selector: str = PIPELINE_LABEL
    ) -> dict[str, set[tuple[str, str, str]]]:
        """Every Pipeline's children in `namespace` by Pipeline name, one list call per
        kind (many Pipelines polled one by one would load the apiserver they measure)."""
        selector = f"{selector},{MANAGED_BY_LABEL}={MANAGER}"
        found: dict[str, set[tuple[str, str, str]]] = {}
        for kind, base in CHILD_PATHS:
            for item in self._list(f"{base}/namespaces/{namespace}/{kind.lower()}s", selector):
                meta = item["metadata"]
                if not meta.get("deletionTimestamp"):
                    owner = meta["labels"][PIPELINE_LABEL]
                    found.setdefault(owner, set()).add((kind, namespace, meta["name"]))
        return found

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.api.sanitize_for_serialization(
                self.apps.read_namespaced_deployment(name, namespace)
            )
        )

    def hpa(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.api.sanitize_for_serialization(
                self.autoscaling.read_namespaced_horizontal_pod_autoscaler(name, namespace)
            )
        )

    def topic(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(*STRIMZI[:2], namespace, STRIMZI[2], name)
        )

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        events = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=Pipeline"
        ).items
        return [{"type": e.type, "reason": e.reason, "message": e.message} for e in events]

    # -- stand-ins ----------------------------------------------------------------------------

    def act_as_strimzi(self, namespace: str, pipeline: str) -> int:
        """Mark the Pipeline's KafkaTopics Ready for their current generation, as
        Strimzi's topic operator does once the topic exists in Kafka."""
        topics = self.custom.list_namespaced_custom_object(
            *STRIMZI[:2], namespace, STRIMZI[2], label_selector=f"flowmill.dev/pipeline={pipeline}"
        )["items"]
        for topic in topics:
            status = {
                "observedGeneration": topic["metadata"]["generation"],
                "topicName": topic["spec"]["topicName"],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
            }
            self.custom.patch_namespaced_custom_object_status(
                *STRIMZI[:2], namespace, STRIMZI[2], topic["metadata"]["name"], {"status": status}
            )
        return len(topics)

    def act_as_kubelet(self, namespace: str, pipeline: str) -> int:
        """Report the Pipeline's pods Running and Ready, as a kubelet would once their
        containers pass the readiness probe; the ReplicaSet and Deployment controllers
        then count them, as in a real cluster."""
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=f"flowmill.dev/pipeline={pipeline}"
        ).items
        now = _now()
        ready = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        for pod in pods:
            # A finished pod (a replay Job's) stays finished: the apiserver refuses more.
            if pod.metadata.deletion_timestamp or pod.status.phase in ("Succeeded", "Failed"):
                continue
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, namespace, {"status": {"phase": "Running", "conditions": ready}}
            )
        return len(pods)

    def finish_job_pods(self, namespace: str, job: str, exit_code: int) -> int:
        """Report the Job's pods terminated with `exit_code`, as a kubelet would once the
        container exited; the Job controller then counts them and sets its conditions."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        now = _now()
        for pod in pods:
            if pod.status.phase in ("Succeeded", "Failed"):
                continue
            terminated = {"exitCode": exit_code, "startedAt": now, "finishedAt": now}
            status = {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {**terminated, "reason": "Completed"}},
                    }
                    for c in pod.spec.containers
                ],
            }
            self.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})
        return len(pods)


def _kafka_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
