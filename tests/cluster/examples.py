"""The examples' cluster variants (k8s/examples/cluster/) applied with `kubectl apply` to the
real node, and read back through their API's Service.

Each test applies its own copy: the Pipeline and its topics get a unique suffix (as the
local e2e tests do, tests/examples/harness.py), since every namespace shares the node's one
Kafka; the image of extra Deployments (Citi Bike's feed) becomes the locally built one; and
the test may make replays faster. Nothing else changes: data come from the variants'
ConfigMaps, Kafka and Redis from the operator's platform defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from kafka.admin import KafkaAdminClient  # type: ignore[import-untyped]
from kubernetes import client as k8s_client

from flowmill.local import find_binary
from flowmill.spec import API_PORT
from flowmill_operator import naming
from tests.cluster.release import describe_pods, pod_ready, run_tool
from tests.examples.harness import EXAMPLES, RENAME_PREFIX, rename_topics
from tests.harness.node import KubeNode
from tests.harness.node_fixtures import POD_SECURITY
from tests.harness.waiting import unique, wait_for

CLUSTER_EXAMPLES = EXAMPLES / "cluster"
PIPELINES = ("flowmill.dev", "v1alpha1", "pipelines")


@dataclass
class ClusterExample:
    """One applied copy of a cluster variant."""

    name: str
    namespace: str
    docs: list[dict[str, Any]]
    path: Path
    applied_at: float = field(default_factory=time.monotonic)

    @property
    def pipeline(self) -> dict[str, Any]:
        return next(d for d in self.docs if d.get("kind") == "Pipeline")

    @property
    def pipeline_name(self) -> str:
        return str(self.pipeline["metadata"]["name"])

    def table_path(self, table: str) -> str:
        return f"/pipelines/{self.pipeline_name}/tables/{table}"

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump_all(self.docs, sort_keys=False))


def load(
    name: str,
    namespace: str,
    into: Path,
    image: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> ClusterExample:
    """k8s/examples/cluster/{name}.yaml, renamed and edited (see the module docstring)."""
    docs = [d for d in yaml.safe_load_all((CLUSTER_EXAMPLES / f"{name}.yaml").read_text()) if d]
    example = ClusterExample(name, namespace, docs, into / f"{name}.yaml")
    rename_topics(example.pipeline, unique(RENAME_PREFIX))
    for doc in docs:
        if doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                c["image"], c["imagePullPolicy"] = image, "Never"
    if edit is not None:
        edit(example.pipeline)
    example.write()
    return example


def kubectl(node: KubeNode, *args: str, timeout: float = 120.0) -> str:
    """The provisioned kubectl on the node's cluster, failing with its output."""
    return run_tool(
        [str(find_binary("kubectl")), f"--kubeconfig={node.kubeconfig}", *args], timeout=timeout
    )


def apply(node: KubeNode, example: ClusterExample) -> None:
    example.write()
    example.applied_at = time.monotonic()
    kubectl(node, "apply", "-n", example.namespace, "-f", str(example.path))


def read_pipeline(api_client: k8s_client.ApiClient, example: ClusterExample) -> dict[str, Any]:
    group, version, plural = PIPELINES
    pipeline: dict[str, Any] = k8s_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        group, version, example.namespace, plural, example.pipeline_name
    )
    return pipeline


def child_pods(core: k8s_client.CoreV1Api, example: ClusterExample) -> list[k8s_client.V1Pod]:
    selector = naming.child_selector(example.pipeline_name)
    pods: list[k8s_client.V1Pod] = core.list_namespaced_pod(
        example.namespace, label_selector=selector
    ).items
    return pods


def wait_running(
    api_client: k8s_client.ApiClient,
    example: ClusterExample,
    expected_deployments: int,
    timeout: float = 180.0,
    accept: Callable[[k8s_client.V1Pod], bool] = lambda pod: True,
) -> list[k8s_client.V1Pod]:
    """Until the operator made every Deployment and each has all its pods Running and Ready
    (no pod of an older revision left), every one of them accepted by `accept`; returns
    the pods."""
    apps = k8s_client.AppsV1Api(api_client)
    core = k8s_client.CoreV1Api(api_client)
    selector = naming.child_selector(example.pipeline_name)

    def settled() -> list[k8s_client.V1Pod] | None:
        deployments = apps.list_namespaced_deployment(
            example.namespace, label_selector=selector
        ).items
        if len(deployments) != expected_deployments:
            return None
        for d in deployments:
            s = d.status
            want = d.spec.replicas or 0
            if (
                (s.observed_generation or 0) < d.metadata.generation
                or (s.updated_replicas or 0) != want
                or (s.ready_replicas or 0) != want
                or (s.replicas or 0) != want
            ):
                return None
        pods = child_pods(core, example)
        if len(pods) != sum(d.spec.replicas or 0 for d in deployments):
            return None
        ok = all(p.status.phase == "Running" and pod_ready(p) and accept(p) for p in pods)
        return pods if ok else None

    try:
        pods: list[k8s_client.V1Pod] = wait_for(
            settled,
            timeout,
            f"{expected_deployments} Deployments of {example.pipeline_name} Running and Ready",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe_pods(core, example.namespace)}") from None
    return pods


def api_client_for(core: k8s_client.CoreV1Api, example: ClusterExample) -> httpx.Client:
    """An HTTP client on the API's Service: its ClusterIP, through kube-proxy's rules."""
    service = core.read_namespaced_service(
        naming.api_deployment(example.pipeline_name), example.namespace
    )
    return httpx.Client(
        base_url=f"http://{service.spec.cluster_ip}:{API_PORT}", timeout=10, trust_env=False
    )


def assert_restricted(
    api_client: k8s_client.ApiClient, namespace: str, pods: list[k8s_client.V1Pod]
) -> None:
    """The namespace enforces `restricted` (so every pod running in it was admitted under
    it), and every flowmill container runs with a read-only root filesystem."""
    labels = k8s_client.CoreV1Api(api_client).read_namespace(namespace).metadata.labels or {}
    for key, value in POD_SECURITY.items():
        assert labels.get(key) == value, f"namespace {namespace}: {key}={labels.get(key)!r}"
    for pod in pods:
        for c in pod.spec.containers:
            context = c.security_context
            assert context is not None and context.read_only_root_filesystem, (
                f"{pod.metadata.name}/{c.name}: root filesystem not read-only"
            )
            assert context.allow_privilege_escalation is False
            assert context.capabilities is not None and context.capabilities.drop == ["ALL"]


def kafka_topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flowmill-cluster-tests")
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def time_to_answer(example: ClusterExample) -> float:
    """Seconds from `kubectl apply` to now (call it when the first correct answer is in)."""
    return time.monotonic() - example.applied_at
