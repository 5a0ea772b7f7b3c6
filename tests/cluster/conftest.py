"""Tests on the real single-node cluster; run them through `scripts/cluster.sh test`."""

from __future__ import annotations

import pytest

from tests.cluster.fixtures import flowmill_release, metrics_stack
from tests.harness.node_fixtures import kube_node, node_api_client, node_namespace

__all__ = ["flowmill_release", "kube_node", "metrics_stack", "node_api_client", "node_namespace"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node: needs the real single-node Kubernetes cluster")
