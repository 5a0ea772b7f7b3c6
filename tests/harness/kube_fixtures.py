"""pytest fixtures for the local Kubernetes control plane (see tests/harness/kube.py).

Loaded as a plugin from tests/conftest.py (`pytest_plugins`). A missing binary makes the
fixture raise ComponentMissing, so dependent tests error with the provisioning hint
instead of being skipped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from tests.harness.kube import KubeControlPlane


@pytest.fixture(scope="session")
def kube_control_plane() -> Iterator[KubeControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, shared by the whole session."""
    with KubeControlPlane() as control_plane:
        yield control_plane


@pytest.fixture(scope="session")
def kube_api_client(kube_control_plane: KubeControlPlane) -> Iterator[k8s_client.ApiClient]:
    """An admin ApiClient for the session's control plane."""
    with kube_control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def kube_namespace(kube_api_client: k8s_client.ApiClient) -> Iterator[str]:
    """A fresh namespace with a random name, deleted after the test."""
    core = k8s_client.CoreV1Api(kube_api_client)
    name = f"test-{secrets.token_hex(4)}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name)))
    yield name
    # Not waiting for the namespace to finish terminating: the namespace controller empties
    # it in the background, and names are never reused.
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise
