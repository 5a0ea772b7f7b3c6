"""Creating a local run's topics (every one all_topics() names) on whatever broker the
run uses, before any worker starts."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import PipelineTopic


class TopicMismatch(RuntimeError):
    """An existing topic has fewer partitions than the manifest declares."""


def ensure_topics(
    bootstrap_servers: str,
    topics: list[PipelineTopic],
    timeout: float = 30.0,
    security: KafkaClientSecurity = PLAINTEXT,
) -> None:
    """Create the missing topics (replication factor 1: a local broker is one node) and
    wait until every partition has a leader, so no worker starts on a half-made topic.

    Existing topics are kept; one with fewer partitions than declared is an error, since a
    join or a keyed window would silently see the wrong partitioning.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="flowmill-run",
        request_timeout_ms=int(timeout * 1000),
        # Its 2 s default is too short for a TLS handshake and a SCRAM exchange on a busy
        # machine, and kafka-python then reports NoBrokersAvailable.
        api_version_auto_timeout_ms=int(timeout * 1000),
        **security.kwargs(),
    )
    try:
        for topic in topics:
            # One request per topic: kafka-python raises on the first error of a batch.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(topic.name, topic.partitions, 1, topic_configs=topic.config)]
                )
        described = _wait_for_leaders(admin, [t.name for t in topics], timeout)
    finally:
        admin.close()
    for topic in topics:
        have = len(described[topic.name]["partitions"])
        if have < topic.partitions:
            raise TopicMismatch(
                f"topic {topic.name} exists with {have} partitions, the manifest declares "
                f"{topic.partitions}; delete it or use a fresh broker"
            )


def _wait_for_leaders(admin: Any, names: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described = {t["topic"]: t for t in admin.describe_topics(names)}
        pending = [
            name
            for name, t in described.items()
            if t["error_code"] != 0
            or not t["partitions"]
            or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if not pending:
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Kafka topics without partition leaders after {timeout:.0f}s: {pending}"
            )
        time.sleep(0.1)
