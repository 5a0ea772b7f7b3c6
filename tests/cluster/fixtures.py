"""Session fixtures of the cluster end-to-end suite: the chart installed once, on the node,
and the metrics half of the autoscaling loop (Prometheus and prometheus-adapter)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.release import Release, install, uninstall
from tests.harness.metrics_stack import MetricsStack
from tests.harness.node import KubeNode


@pytest.fixture(scope="session")
def flowmill_release(
    kube_node: KubeNode, metrics_stack: MetricsStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """`helm install` of charts/flowmill with the locally built image, the session's
    Prometheus as monitoring.prometheusUrl (the APIs' health view reads it); the operator
    is a Ready pod when this returns."""
    home = tmp_path_factory.mktemp("helm")
    release = install(kube_node, home, metrics_stack.prometheus_url)
    print(f"[cluster] helm install: operator pod Ready in {release.install_seconds:.1f}s")
    yield release
    uninstall(kube_node, home, release)


@pytest.fixture(scope="session")
def metrics_stack(kube_node: KubeNode) -> Iterator[MetricsStack]:
    """Prometheus scraping every annotated pod of the node and prometheus-adapter serving
    the step HPAs' external metric, for every test of the session that needs the HPAs to
    act (the in-process operator's Pipelines and the chart's alike)."""
    stack = MetricsStack(kube_node)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
