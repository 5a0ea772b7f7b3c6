"""Fixtures that start real Kafka, Redis and a Kubernetes control plane on loopback.

A component that is not provisioned fails the tests that need it with a message saying
how to install it; nothing is skipped. Each test is marked with the components its
fixtures start (`-m "not kube"` leaves out every test that needs the control plane).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = [
    "tests.harness.kafka_redis_fixtures",
    "tests.harness.kube_fixtures",
    "tests.harness.s3_server",
    "tests.harness.secure_kafka",
    "tests.operator.fixtures",
]

COMPONENT_FIXTURES = {
    "kafka": {"kafka_broker", "kafka_installed", "secure_kafka"},
    "redis": {"redis_server", "redis_installed"},
    "kube": {"kube_control_plane", "kube_node"},
    "node": {"kube_node"},
    "s3": {"s3_server"},
}
"""Marker -> the fixtures that start (or, for tests that start it themselves, check) the
component; a test gets the marker when its fixture closure holds one of them."""


NODE_TESTS = "tests/cluster/"
"""Where the tests on the real node live: under `pytest -n N --dist loadgroup` (make test)
they form one group, run by one worker, the one that starts the node (one per machine)."""


def work_group(nodeid: str) -> str:
    """The unit of work a test belongs to: the node's tests together, and every other
    module whole, so its module fixtures are set up once."""
    path = nodeid.split("::")[0]
    return "node" if path.startswith(NODE_TESTS) else path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in COMPONENT_FIXTURES.items():
            if closure & fixtures:
                item.add_marker(marker)
    # Longest units first (the node's, then the modules that run whole pipelines with
    # faults), so the other workers share the short ones at the end instead of one worker
    # finishing a long module alone.
    items.sort(key=lambda item: _start_rank(work_group(item.nodeid)))


LONG_MODULES = (
    "tests/workers/test_faults_",
    "tests/workers/test_crash_",
    "tests/test_flowmill_test.py",
    "tests/test_run_shutdown.py",
    "tests/examples/",
    "tests/faust/",
    "tests/security/",
)


def _start_rank(group: str) -> int:
    if group == "node":
        return 0
    return 1 if group.startswith(LONG_MODULES) else 2


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadgroup by work_group. xdist's own loadgroup reads xdist_group markers that it
    turns into node ids in the workers' collection hook, which runs before this
    conftest's there; the controller's scope function needs no markers at all."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_group(nodeid)

    return GroupScheduling(config, log)
