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

from flowmill.spec.pipeline import Pipeline, TopicSpec

STRIMZI_PLAIN_PORT = 9092
"""Port of a Strimzi cluster's plain (no TLS) listener."""

# The headers of a dead letter (the original bytes of a bad event on a step's dead-letter
# topic): the workers write them; `flowmill test` and the API's health view read them.
DEAD_LETTER_REASON_HEADER = "flowmill-reason"
"""Why the event was dead-lettered (at most DEAD_LETTER_MAX_REASON characters)."""
DEAD_LETTER_MAX_REASON = 1000
DEAD_LETTER_PIPELINE_HEADER = "flowmill-pipeline"
DEAD_LETTER_STEP_HEADER = "flowmill-step"
"""The step that dead-lettered it."""
DEAD_LETTER_ORIGIN_HEADERS = (
    "flowmill-source-topic",
    "flowmill-source-partition",
    "flowmill-source-offset",
)
"""Topic, partition and offset of the consumed record it stands for."""
DEAD_LETTER_TIMESTAMP_HEADER = "flowmill-source-timestamp"
"""The consumed record's Kafka timestamp (epoch ms)."""


@dataclass(frozen=True)
class PipelineTopic:
    """One topic a Pipeline needs, with what creating it takes."""

    name: str
    partitions: int
    replicas: int
    config: dict[str, str] = field(default_factory=dict)
    step: str | None = None
    """The step owning an internal topic (a join's or a Faust Table's changelog); None
    for declared topics."""


def all_topics(pipeline: Pipeline) -> list[PipelineTopic]:
    """Declared topics in manifest order, then the steps' internal topics: one changelog
    per join step and one per Table of a Faust step."""
    spec = pipeline.spec
    topics = [PipelineTopic(t.name, t.partitions, t.replicas, dict(t.config)) for t in spec.topics]
    for step in spec.steps:
        if step.faust is not None:
            topics += _faust_changelogs(
                pipeline, step.name, step.faust.tables, spec.topic(step.from_)
            )
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


def _faust_changelogs(
    pipeline: Pipeline, step: str, tables: list[str], source: TopicSpec
) -> list[PipelineTopic]:
    # Faust co-partitions a table with the stream that updates it (it refuses a changelog
    # whose partition count differs from its source's), and a worker restores partition p
    # of a table from partition p of its changelog.
    return [
        PipelineTopic(
            faust_changelog_topic(pipeline.name, step, table),
            source.partitions,
            source.replicas,
            {"cleanup.policy": "compact"},
            step=step,
        )
        for table in tables
    ]


def changelog_topic(pipeline: str, step: str) -> str:
    """The compacted topic holding a join step's pending (not yet matched) events."""
    return f"{pipeline}.{step}.pending"


def _worker_id(pipeline: str, name: str) -> str:
    # Kafka-side identity of one source or step of one Pipeline.
    return f"flowmill.{pipeline}.{name}"


def consumer_group(pipeline: str, step: str) -> str:
    """The consumer group of a step: one per step, so each scales on its own lag."""
    return _worker_id(pipeline, step)


def faust_app_id(pipeline: str, step: str) -> str:
    """The Faust app id of a Faust step, whatever id its code gives: Faust uses it as the
    consumer group and as the prefix of its internal topics, so it is the step's group
    (the lag series and the autoscaler's metric name the same group as any step's)."""
    return consumer_group(pipeline, step)


def faust_changelog_topic(pipeline: str, step: str, table: str) -> str:
    """The compacted topic Faust keeps a Faust step's Table in (Faust's own format,
    `{app id}-{table}-changelog`; the step's workers run with topic_allow_declare off,
    so this is created like the declared topics). Faust's other internal topic, the
    leader topic `{app id}-__assignor-__leader`, is disabled (topic_disable_leader): a
    step's agent has no leader-only timers."""
    return f"{faust_app_id(pipeline, step)}-{table}-changelog"


def step_transactional_id(pipeline: str, step: str, instance: str) -> str:
    """A transactional step worker's id; `instance` (the pod's hostname) keeps the
    replicas of one step from fencing each other."""
    return f"{consumer_group(pipeline, step)}.{instance}"


def emitter_transactional_id(pipeline: str, step: str) -> str:
    """The one producer that moves a window step's records (sink.kafka.emit) to its topic:
    one id per step, whichever replica runs it, so a new emitter fences the last one."""
    return f"{consumer_group(pipeline, step)}.emit"


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
