"""The topics a local run needs: every topic the manifest declares, plus the compacted
changelog topic of each join step (the operator creates those too; see
flowmill_workers.steps.correlate)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from flowmill.spec import Pipeline


@dataclass(frozen=True)
class TopicPlan:
    """One topic to create: name, partitions and topic configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topics_of(pipeline: Pipeline) -> list[TopicPlan]:
    """Declared topics, then one changelog per join step."""
    from flowmill_workers.steps.correlate import changelog_topic

    plans = [TopicPlan(t.name, t.partitions, dict(t.config)) for t in pipeline.spec.topics]
    for step in pipeline.spec.steps:
        if step.correlate is not None:
            # Same partition count as the step's input: partition p of the pending state
            # belongs to whoever owns partition p of the input.
            partitions = pipeline.spec.topic(step.from_).partitions
            plans.append(
                TopicPlan(
                    changelog_topic(pipeline.name, step.name),
                    partitions,
                    {"cleanup.policy": "compact"},
                )
            )
    return plans


class TopicMismatch(RuntimeError):
    """An existing topic has fewer partitions than the manifest declares."""


def ensure_topics(bootstrap_servers: str, plans: list[TopicPlan], timeout: float = 30.0) -> None:
    """Create the missing topics (replication factor 1: a local broker is one node) and
    wait until every partition has a leader, so no worker starts on a half-made topic.

    Existing topics are kept; one with fewer partitions than declared is an error, since a
    join or a keyed window would silently see the wrong partitioning.
    """
    from kafka import KafkaAdminClient  # type: ignore[import-untyped]
    from kafka.admin import NewTopic  # type: ignore[import-untyped]
    from kafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="flowmill-run",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        for plan in plans:
            # One request per topic: kafka-python raises on the first error of a batch.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(plan.name, plan.partitions, 1, topic_configs=plan.config)]
                )
        described = _wait_for_leaders(admin, [p.name for p in plans], timeout)
    finally:
        admin.close()
    for plan in plans:
        have = len(described[plan.name]["partitions"])
        if have < plan.partitions:
            raise TopicMismatch(
                f"topic {plan.name} exists with {have} partitions, the manifest declares "
                f"{plan.partitions}; delete it or use a fresh broker"
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
