"""pytest fixtures for the real single-node cluster (see tests/harness/node.py).

The session must run inside the network namespace scripts/cluster.sh creates
(`scripts/cluster.sh test -- <pytest args>`, which `make test` uses); elsewhere kube_node
fails with a message saying so. Nothing is skipped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from tests.harness.node import KubeNode

# What every pod in the clusters' test namespaces must satisfy; the tests' pods are
# admitted under it, as users' pods are in a hardened cluster.
POD_SECURITY = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def kube_node() -> Iterator[KubeNode]:
    """The node with its control plane, Kafka and Redis, shared by the whole session; its
    teardown fails the session if anything of it is left on the host."""
    node = KubeNode()
    node.start()
    try:
        yield node
    finally:
        node.stop()
    assert not node.leftovers, "the node left this on the host:\n" + "\n".join(node.leftovers)


@pytest.fixture(scope="session")
def node_api_client(kube_node: KubeNode) -> Iterator[k8s_client.ApiClient]:
    """An admin ApiClient for the node's cluster."""
    with kube_node.api_client() as api_client:
        yield api_client


@pytest.fixture
def node_namespace(node_api_client: k8s_client.ApiClient) -> Iterator[str]:
    """A fresh namespace enforcing the `restricted` Pod Security Standard, deleted after."""
    core = k8s_client.CoreV1Api(node_api_client)
    name = f"test-{secrets.token_hex(4)}"
    core.create_namespace(
        k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name, labels=POD_SECURITY))
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise
