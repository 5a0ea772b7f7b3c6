"""pytest fixtures for operator tests (a plugin listed in tests/conftest.py).

`flowmill_operator` runs the real operator in a thread of the test process, against the
session's kube-apiserver, watching only namespaces named `fmop-*`; `op_namespace` makes
such a namespace per test. Tests that need their own operator (restart, RBAC) watch
other names so the two never share a Pipeline.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from flowmill_operator.runner import OperatorThread
from flowmill_operator.settings import OperatorSettings, RenderSettings
from tests.harness.kube import KubeControlPlane
from tests.harness.waiting import wait_for
from tests.operator import crds
from tests.operator.helpers import GROUP, PLURAL, ROOT, VERSION, Cluster

PIPELINE_CRD = ROOT / "k8s" / "crd" / "pipelines.flowmill.dev.yaml"
TEST_IMAGE = "registry.example/flowmill:test"
# What a platform team configures once: examples written for `flowmill run` leave
# spec.kafka and spec.redis empty and get these on the cluster.
TEST_RENDER = RenderSettings(
    image=TEST_IMAGE,
    default_kafka_cluster="events",
    default_redis_url="redis://redis.flowmill.svc:6379/0",
    prometheus_url="http://prometheus.monitoring.svc:9090",
)
# Short in tests so drift correction and status refresh show within a test's patience.
RESYNC_SECONDS = 2.0


def operator_settings(
    kubeconfig: Path | str, namespaces: tuple[str, ...], **overrides: object
) -> OperatorSettings:
    base = OperatorSettings(
        render=TEST_RENDER,
        namespaces=namespaces,
        kubeconfig=str(kubeconfig),
        resync_seconds=RESYNC_SECONDS,
        retry_seconds=1.0,
    )
    return base.model_copy(update=overrides)


@pytest.fixture(scope="session")
def operator_crds(kube_control_plane: KubeControlPlane) -> KubeControlPlane:
    """The Pipeline CRD plus the third-party CRDs the operator writes to."""
    for crd in (*crds.ALL,):
        kube_control_plane.install_crd(crd)
    kube_control_plane.install_crd(PIPELINE_CRD)

    # A (re)installed CRD answers 429 "storage is (re)initializing" for a moment; start
    # the operator (and its clocks) only once Pipelines can be listed.
    def listable() -> bool:
        try:
            kube_control_plane.kubectl(
                "get",
                "pipelines,kafkatopics,scaledobjects,podmonitors,prometheusrules",
                "-A",
                timeout=10,
            )
        except subprocess.CalledProcessError:
            return False
        return True

    wait_for(listable, 30, "the CRDs to serve", interval=0.2)
    return kube_control_plane


@pytest.fixture(scope="session")
def cluster(kube_api_client: k8s_client.ApiClient) -> Cluster:
    return Cluster(kube_api_client)


@pytest.fixture(scope="session")
def flowmill_operator(
    operator_crds: KubeControlPlane, cluster: Cluster
) -> Iterator[OperatorThread]:
    """One operator for the session's fmop-* namespaces."""
    assert operator_crds.kubeconfig is not None
    thread = OperatorThread(operator_settings(operator_crds.kubeconfig, ("fmop-*",)))
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def garbage_collector_knows_pipelines(operator_crds: KubeControlPlane, cluster: Cluster) -> None:
    """Wait until the garbage collector can resolve Pipelines as owners.

    kube-controller-manager rediscovers API resources every 30 s; until it has seen the
    Pipeline CRD it cannot tell that an owner is gone, and dependents linger. Probe with
    a throwaway owner and dependent (fast once discovery has happened).
    """
    namespace = f"gcprobe-{secrets.token_hex(3)}"
    cluster.create_namespace(namespace)
    owner = cluster.create_pipeline(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Pipeline",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"topics": [{"name": "t"}]},
        }
    )
    ref = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Pipeline",
        "name": "probe",
        "uid": owner["metadata"]["uid"],
    }
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    cluster.delete_pipeline(namespace, "probe")  # no operator here: no finalizer

    def collected() -> bool:
        try:
            cluster.core.read_namespaced_config_map("dependent", namespace)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(collected, 60, "the garbage collector to discover the Pipeline kind", interval=0.5)
    cluster.core.delete_namespace(namespace)


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
