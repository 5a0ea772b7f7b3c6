"""`helm install charts/flowmill` on the real node: the operator is a real pod of the locally
built image, Ready, admitted under the `restricted` Pod Security Standard, running as the
chart's ServiceAccount with the chart's rights and no more."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from tests.cluster.examples import assert_restricted
from tests.cluster.release import EXAMPLE_NAMESPACES, Release, can_i, pod_ready
from tests.harness.node import KubeNode

pytestmark = pytest.mark.node


def test_operator_is_a_ready_pod_of_the_local_image(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, flowmill_release: Release
) -> None:
    assert kube_node.images is not None
    core = k8s_client.CoreV1Api(node_api_client)
    pod = core.read_namespaced_pod(flowmill_release.operator_pod, flowmill_release.namespace)
    assert pod_ready(pod) and pod.status.phase == "Running"
    assert pod.spec.node_name == kube_node.name
    (container,) = pod.spec.containers
    assert container.image == kube_node.images.flowmill
    # Ready because Kopf answers its health endpoint, not merely because the process started.
    assert container.readiness_probe.http_get.path == "/healthz"
    (status,) = pod.status.container_statuses
    assert status.ready and status.restart_count == 0, status
    assert_restricted(node_api_client, flowmill_release.namespace, [pod])


def test_operator_runs_as_the_charts_service_account_not_admin(
    kube_node: KubeNode, node_api_client: k8s_client.ApiClient, flowmill_release: Release
) -> None:
    sa = flowmill_release.service_account
    ns = flowmill_release.namespace
    core = k8s_client.CoreV1Api(node_api_client)
    account = core.read_namespaced_service_account(sa, ns)
    assert sa != "default"
    assert (account.metadata.labels or {}).get(
        "app.kubernetes.io/instance"
    ) == flowmill_release.name

    # What it needs, in the namespaces it watches.
    watched = EXAMPLE_NAMESPACES[0]
    for needed in [
        ("watch", "pipelines.flowmill.dev"),
        ("patch", "pipelines.flowmill.dev", "--subresource=status"),
        ("create", "deployments.apps"),
        ("create", "services"),
        ("create", "horizontalpodautoscalers.autoscaling"),
        ("create", "events"),
    ]:
        assert can_i(kube_node, sa, ns, *needed, "-n", watched), needed
    # Nothing beyond them, and nothing an admin has.
    for args in [
        ("*", "*", "--all-namespaces"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("get", "secrets", "-n", "kube-system"),
        ("create", "deployments.apps", "-n", "default"),
        ("create", "pods", "-n", "kube-system"),
        ("delete", f"namespaces/{watched}"),
    ]:
        assert not can_i(kube_node, sa, ns, *args), f"the operator may {' '.join(args)}"
