"""What a Pipeline becomes in Kafka: every topic it needs (declared and internal), the
consumer groups and transactional ids of its workers, and where a Strimzi cluster's
brokers are.

The operator creates these topics, `flowmill run` creates them locally, the workers read
and write them, and the tests set them up: all ask this module, so a name is spelled once.
The formats are part of a running Pipeline's state (committed offsets belong to a group
id, a join's pending events live in its changelog topic): changing one orphans that state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowmill.spec.pipeline import Pipeline

STRIMZI_PLAIN_PORT = 9092
"""Port of a Strimzi cluster's plain (no TLS) listener."""


@dataclass(frozen=True)
class PipelineTopic:
    """One topic a Pipeline needs, with what creating it takes."""

    name: str
    partitions: int
    replicas: int
    config: dict[str, str] = field(default_factory=dict)
    step: str | None = None
    """The step owning an internal topic (a join's changelog); None for declared topics."""


def all_topics(pipeline: Pipeline) -> list[PipelineTopic]:
    """Declared topics in manifest order, then one changelog per join step."""
    spec = pipeline.spec
    topics = [PipelineTopic(t.name, t.partitions, t.replicas, dict(t.config)) for t in spec.topics]
    for step in spec.steps:
        if step.correlate is None:
            continue
        # Partition p of the pending state belongs to whoever owns partition p of the
        # input, so the changelog has the input's partitions and is as durable as it.
        source = spec.topic(step.from_)
        topics.append(
            PipelineTopic(
                changelog_topic(pipeline.name, step.name),
                source.partitions,
                source.replicas,
                {"cleanup.policy": "compact"},
                step=step.name,
            )
        )
    return topics


def changelog_topic(pipeline: str, step: str) -> str:
    """The compacted topic holding a join step's pending (not yet matched) events."""
    return f"{pipeline}.{step}.pending"


def _worker_id(pipeline: str, name: str) -> str:
    # Kafka-side identity of one source or step of one Pipeline.
    return f"flowmill.{pipeline}.{name}"


def consumer_group(pipeline: str, step: str) -> str:
    """The consumer group of a step: one per step, so each scales on its own lag."""
    return _worker_id(pipeline, step)


def step_transactional_id(pipeline: str, step: str, instance: str) -> str:
    """A transactional step worker's id; `instance` (the pod's hostname) keeps the
    replicas of one step from fencing each other."""
    return f"{consumer_group(pipeline, step)}.{instance}"


def mirror_group(pipeline: str, source: str) -> str:
    """The consumer group of a `kafka` source on its upstream topic: its committed
    offsets are the source's position."""
    return _worker_id(pipeline, source)


def source_transactional_id(pipeline: str, source: str) -> str:
    """Stable per source, so a restarted instance fences its predecessor."""
    return _worker_id(pipeline, source)


def strimzi_bootstrap_servers(cluster: str, namespace: str | None) -> str:
    """The plain listener of a Strimzi `Kafka` resource: its bootstrap Service, fully
    qualified so it resolves from any namespace. Without a namespace the short name is
    the only answer, resolving in the caller's own namespace."""
    host = f"{cluster}-kafka-bootstrap"
    if namespace:
        host += f".{namespace}.svc"
    return f"{host}:{STRIMZI_PLAIN_PORT}"
