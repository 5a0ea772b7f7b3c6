"""Session fixtures of the cluster end-to-end suite: the chart installed once, on the node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.release import Release, install, uninstall
from tests.harness.node import KubeNode


@pytest.fixture(scope="session")
def flowmill_release(
    kube_node: KubeNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """`helm install` of charts/flowmill with the locally built image; the operator is a
    Ready pod when this returns."""
    home = tmp_path_factory.mktemp("helm")
    release = install(kube_node, home)
    print(f"[cluster] helm install: operator pod Ready in {release.install_seconds:.1f}s")
    yield release
    uninstall(kube_node, home, release)
