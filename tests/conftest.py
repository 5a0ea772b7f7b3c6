"""Fixtures that start real Kafka, Redis and a Kubernetes control plane on loopback.

A component that is not provisioned fails the tests that need it with a message saying
how to install it; nothing is skipped. Each test is marked with the components its
fixtures start (`-m "not kube"` leaves out every test that needs the control plane).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.harness.kafka_redis_fixtures",
    "tests.harness.kube_fixtures",
    "tests.operator.fixtures",
]

COMPONENT_FIXTURES = {
    "kafka": {"kafka_broker", "kafka_installed"},
    "redis": {"redis_server", "redis_installed"},
    "kube": {"kube_control_plane", "kube_node"},
    "node": {"kube_node"},
}
"""Marker -> the fixtures that start (or, for tests that start it themselves, check) the
component; a test gets the marker when its fixture closure holds one of them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in COMPONENT_FIXTURES.items():
            if closure & fixtures:
                item.add_marker(marker)
