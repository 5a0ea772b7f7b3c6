"""Strimzi KafkaTopic resources: the Pipeline's declared topics and its joins' internal
topics."""

from __future__ import annotations

from flowmill.spec import PipelineTopic, all_topics
from flowmill_operator import naming
from flowmill_operator.render.context import Manifest, RenderContext


def kafka_topics(ctx: RenderContext) -> list[Manifest]:
    """One KafkaTopic per topic when Strimzi manages them; none in the other modes
    (admin: the reconciler creates them through the Kafka admin API, topic_admin.py)."""
    cluster = ctx.kafka.cluster
    if ctx.kafka.topic_management != "strimzi" or not cluster:
        return []
    return [_topic(ctx, cluster, topic) for topic in all_topics(ctx.pipeline)]


def _topic(ctx: RenderContext, cluster: str, topic: PipelineTopic) -> Manifest:
    labels = {"strimzi.io/cluster": cluster}
    if topic.step:
        labels[naming.STEP_LABEL] = topic.step
    meta = ctx.metadata(
        naming.kafka_topic_resource(ctx.name, topic.name),
        "topic",
        namespace=ctx.kafka.namespace,
        extra_labels=labels,
    )
    body: Manifest = {
        "topicName": topic.name,
        "partitions": topic.partitions,
        "replicas": topic.replicas,
    }
    if topic.config:
        body["config"] = dict(topic.config)
    return {
        "apiVersion": ctx.settings.strimzi_api_version,
        "kind": "KafkaTopic",
        "metadata": meta,
        "spec": body,
    }
