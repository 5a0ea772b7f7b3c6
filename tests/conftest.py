"""Fixtures that start real Kafka, Redis and a Kubernetes control plane on loopback.

A component that is not provisioned fails the tests that need it with a message saying
how to install it; nothing is skipped.
"""

pytest_plugins = [
    "tests.harness.kafka_redis_fixtures",
    "tests.harness.kube_fixtures",
    "tests.operator.fixtures",
]
