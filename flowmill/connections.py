"""Where a component finds Kafka and Redis: flag, then environment, then the manifest."""

from __future__ import annotations

import os

from flowmill.spec import ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, Pipeline, strimzi_bootstrap_servers


class ConnectionMissing(ValueError):
    """Neither a flag, the environment nor the manifest says where a service is."""


def bootstrap_servers(pipeline: Pipeline, flag: str | None = None) -> str:
    """Kafka bootstrap servers for this Pipeline."""
    kafka = pipeline.spec.kafka
    found = flag or os.environ.get(ENV_BOOTSTRAP_SERVERS) or kafka.bootstrap_servers
    if not found and kafka.cluster:
        # An unset spec.kafka.namespace means the Pipeline's own.
        namespace = kafka.namespace or pipeline.metadata.namespace
        found = strimzi_bootstrap_servers(kafka.cluster, namespace)
    if not found:
        raise ConnectionMissing(
            f"no Kafka for Pipeline {pipeline.name}: pass --bootstrap-servers, set "
            f"{ENV_BOOTSTRAP_SERVERS}, or set spec.kafka.bootstrapServers"
        )
    return found


def redis_url(pipeline: Pipeline, flag: str | None = None) -> str:
    """Redis URL for this Pipeline (a secretRef arrives through the environment)."""
    found = flag or os.environ.get(ENV_REDIS_URL) or pipeline.spec.redis.url
    if not found:
        raise ConnectionMissing(
            f"no Redis for Pipeline {pipeline.name}: pass --redis-url, set {ENV_REDIS_URL}, "
            "or set spec.redis.url"
        )
    return found
