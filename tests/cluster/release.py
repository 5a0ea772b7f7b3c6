"""The chart installed on the real node: `helm install charts/flowmill` with the locally
built image, the operator a real pod, topics through the Kafka admin API (no Strimzi here),
the node's Kafka and Redis as the platform defaults.

The release watches a fixed list of namespaces (a Role in each, the chart's least-privilege
mode), which the session creates first, labelled `restricted`. One release serves the whole
session; tests/cluster/test_skaffold.py deploys a second, cluster-wide one of its own, in a
namespace this one does not watch.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill.local import find_binary
from tests.harness.node import KubeNode
from tests.harness.node_fixtures import POD_SECURITY
from tests.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "flowmill"
RELEASE = "flowmill"
OPERATOR_NAMESPACE = "flowmill-system"
# The namespaces whose Pipelines the session's operator reconciles: one per example test.
EXAMPLE_NAMESPACES = ("ex-streampulse", "ex-trips", "ex-citibike")


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    operator_pod: str
    install_seconds: float


def run_tool(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300.0
) -> str:
    """Run a command; on failure, raise with its output (a CalledProcessError hides it)."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def helm_env(node: KubeNode, home: Path) -> dict[str, str]:
    """helm's caches and config under `home`, the node's kubeconfig; nothing of the user's."""
    return {
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(node.kubeconfig),
        "PATH": f"{find_binary('kubectl').parent}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
    }


def image_values(image: str) -> list[str]:
    """--set flags for a locally imported image (`localhost/flowmill:dev`): never pulled."""
    repository, _, tag = image.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def create_restricted_namespace(core: k8s_client.CoreV1Api, name: str) -> None:
    core.create_namespace(
        k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name, labels=POD_SECURITY))
    )


def install(node: KubeNode, home: Path, prometheus_url: str | None = None) -> Release:
    """Install the chart and wait until the operator's pod is Ready; `prometheus_url`:
    the Prometheus every Pipeline's API reads for its health view (reachable from pods)."""
    assert node.images is not None and node.kafka is not None and node.redis is not None
    with node.api_client() as api_client:
        core = k8s_client.CoreV1Api(api_client)
        for namespace in (OPERATOR_NAMESPACE, *EXAMPLE_NAMESPACES):
            create_restricted_namespace(core, namespace)
    watch = [
        flag
        for i, ns in enumerate(EXAMPLE_NAMESPACES)
        for flag in ("--set", f"watchNamespaces[{i}]={ns}")
    ]
    began = time.monotonic()
    run_tool(
        [
            str(find_binary("helm")),
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            OPERATOR_NAMESPACE,
            *image_values(node.images.flowmill),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "kafka.topicManagement=admin",
            "--set",
            f"kafka.defaultBootstrapServers={node.kafka.bootstrap_servers}",
            "--set",
            f"redis.defaultUrl={node.redis.url}",
            # The examples' own resync is what notices a force-deleted pod's replacement
            # going Ready; keep status fresh within the tests' bounds.
            "--set",
            "operator.resyncSeconds=10",
            *watch,
            *(["--set", f"monitoring.prometheusUrl={prometheus_url}"] if prometheus_url else []),
            "--wait",
            "--timeout",
            "180s",
        ],
        env=helm_env(node, home),
        timeout=240,
    )
    with node.api_client() as api_client:
        pod = wait_ready_pod(
            k8s_client.CoreV1Api(api_client),
            OPERATOR_NAMESPACE,
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator",
            timeout=120,
        )
    return Release(
        name=RELEASE,
        namespace=OPERATOR_NAMESPACE,
        service_account=pod.spec.service_account_name,
        operator_pod=pod.metadata.name,
        install_seconds=time.monotonic() - began,
    )


def uninstall(node: KubeNode, home: Path, release: Release) -> None:
    run_tool(
        [
            str(find_binary("helm")),
            "uninstall",
            release.name,
            "--namespace",
            release.namespace,
            "--wait",
            "--timeout",
            "120s",
        ],
        env=helm_env(node, home),
        timeout=180,
    )


def pod_ready(pod: k8s_client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def wait_ready_pod(
    core: k8s_client.CoreV1Api, namespace: str, selector: str, timeout: float = 120.0
) -> k8s_client.V1Pod:
    """The one Ready pod matching `selector`; on timeout the error shows every pod's status."""

    def ready() -> k8s_client.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        found = [p for p in pods if pod_ready(p)]
        return found[0] if len(found) == 1 and len(pods) == 1 else None

    try:
        pod: k8s_client.V1Pod = wait_for(ready, timeout, f"one Ready pod {selector} in {namespace}")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe_pods(core, namespace)}") from None
    return pod


def describe_pods(core: k8s_client.CoreV1Api, namespace: str) -> str:
    """Every pod's phase, conditions, container states and last log lines, for a failure."""
    lines = []
    for pod in core.list_namespaced_pod(namespace).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
        for c in pod.status.conditions or []:
            lines.append(f"  {c.type}={c.status} {c.reason or ''} {c.message or ''}")
        for s in pod.status.container_statuses or []:
            lines.append(f"  container {s.name}: restarts {s.restart_count}, {s.state}")
            try:
                log = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=s.name, tail_lines=15
                )
                lines.extend(f"    | {line}" for line in str(log).splitlines())
            except ApiException as e:
                lines.append(f"    (no logs: {e.reason})")
    events = core.list_namespaced_event(namespace).items
    for ev in events[-20:]:
        lines.append(f"event {ev.involved_object.kind}/{ev.involved_object.name}: {ev.message}")
    return "\n".join(lines) or f"(no pods in {namespace})"


def can_i(node: KubeNode, service_account: str, namespace: str, *args: str) -> bool:
    """`kubectl auth can-i ARGS` as the ServiceAccount (impersonated by the admin)."""
    out = node.kubectl(
        "auth",
        "can-i",
        *args,
        f"--as=system:serviceaccount:{namespace}:{service_account}",
        check=False,
    )
    return out.strip() == "yes"
