"""pytest fixtures for operator tests (a plugin listed in tests/conftest.py).

`flowmill_operator` runs the real operator in a thread of the test process, against the
session's kube-apiserver, watching only namespaces named `fmop-*`; `op_namespace` makes
such a namespace per test. Tests that need their own operator (restart, RBAC) watch
other names so the two never share a Pipeline.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill_operator.runner import OperatorThread
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.harness.kube import KubeControlPlane
from tests.operator import crds
from tests.operator.helpers import GROUP, PLURAL, ROOT, VERSION, Cluster, wait_for

PIPELINE_CRD = ROOT / "k8s" / "crd" / "pipelines.flowmill.dev.yaml"
TEST_IMAGE = "registry.example/flowmill:test"
# Short in tests so drift correction and status refresh show within a test's patience.
RESYNC_SECONDS = 1.0


def operator_settings(
    kubeconfig: Path | str, namespaces: tuple[str, ...], **overrides: object
) -> OperatorSettings:
    render = RenderSettings(image=TEST_IMAGE)
    base = OperatorSettings(
        render=render,
        namespaces=namespaces,
        kubeconfig=str(kubeconfig),
        resync_seconds=RESYNC_SECONDS,
        retry_seconds=1.0,
    )
    return OperatorSettings(**{**base.__dict__, **overrides})


@pytest.fixture(scope="session")
def operator_crds(kube_control_plane: KubeControlPlane) -> KubeControlPlane:
    """The Pipeline CRD plus the third-party CRDs the operator writes to."""
    for crd in (*crds.ALL,):
        kube_control_plane.install_crd(crd)
    kube_control_plane.install_crd(PIPELINE_CRD)
    return kube_control_plane


@pytest.fixture(scope="session")
def cluster(kube_api_client: k8s_client.ApiClient) -> Cluster:
    return Cluster(kube_api_client)


@pytest.fixture(scope="session")
def flowmill_operator(operator_crds: KubeControlPlane, cluster: Cluster) -> Iterator[OperatorThread]:
    """One operator for the session's fmop-* namespaces."""
    assert operator_crds.kubeconfig is not None
    thread = OperatorThread(operator_settings(operator_crds.kubeconfig, ("fmop-*",)))
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def op_namespace(flowmill_operator: OperatorThread, cluster: Cluster) -> Iterator[str]:
    """A fresh namespace the session operator watches. Its Pipelines are deleted (and
    their finalizers run) while the operator still runs, then the namespace goes."""
    name = f"fmop-{secrets.token_hex(4)}"
    cluster.create_namespace(name)
    yield name
    delete_pipelines(cluster, name)


def delete_pipelines(cluster: Cluster, namespace: str, wait: float = 15) -> None:
    items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    for item in items:
        try:
            cluster.delete_pipeline(namespace, item["metadata"]["name"])
        except ApiException as err:
            if err.status != 404:
                raise

    def gone() -> bool:
        left = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return not left["items"]

    if items:
        wait_for(gone, wait, f"Pipelines in {namespace} to be finalized")
    try:
        cluster.core.delete_namespace(namespace)
    except ApiException as err:
        if err.status != 404:
            raise
