"""Strimzi KafkaTopic resources: the Pipeline's declared topics and its joins' internal
topics."""

from __future__ import annotations

from flowmill.spec import TopicSpec
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext


def kafka_topics(ctx: RenderContext) -> list[Manifest]:
    """One KafkaTopic per topic; none without a Strimzi cluster (a Pipeline pointing at
    bootstrapServers of its own manages its topics itself)."""
    cluster = ctx.kafka.cluster
    if not cluster:
        return []
    spec = ctx.pipeline.spec
    topics = [_topic(ctx, cluster, t.name, t.partitions, t.replicas, t.config) for t in spec.topics]
    for step in spec.steps:
        if step.correlate is None:
            continue
        # A join keeps unmatched events per input partition in a compacted changelog, so
        # the changelog has the input's partitions and is as durable as the input.
        source: TopicSpec = spec.topic(step.from_)
        topics.append(
            _topic(
                ctx,
                cluster,
                naming.pending_topic(ctx.name, step.name),
                source.partitions,
                source.replicas,
                {"cleanup.policy": "compact"},
                step=step.name,
            )
        )
    return topics


def _topic(
    ctx: RenderContext,
    cluster: str,
    topic: str,
    partitions: int,
    replicas: int,
    config: dict[str, str],
    step: str | None = None,
) -> Manifest:
    meta = ctx.metadata(
        naming.kafka_topic_resource(ctx.name, topic),
        "topic",
        namespace=ctx.kafka.namespace,
        extra_labels={"strimzi.io/cluster": cluster, **({naming.STEP_LABEL: step} if step else {})},
    )
    body: Manifest = {"topicName": topic, "partitions": partitions, "replicas": replicas}
    if config:
        body["config"] = dict(config)
    return {
        "apiVersion": ctx.settings.strimzi_api_version,
        "kind": "KafkaTopic",
        "metadata": meta,
        "spec": body,
    }
