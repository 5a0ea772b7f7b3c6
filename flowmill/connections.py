"""Where a component finds Kafka and Redis: flag, then environment, then the manifest."""

from __future__ import annotations

import os

from flowmill.spec import Pipeline

ENV_BOOTSTRAP = "FLOWMILL_BOOTSTRAP_SERVERS"
ENV_REDIS_URL = "FLOWMILL_REDIS_URL"


class ConnectionMissing(ValueError):
    """Neither a flag, the environment nor the manifest says where a service is."""


def bootstrap_servers(pipeline: Pipeline, flag: str | None = None) -> str:
    """Kafka bootstrap servers for this Pipeline."""
    kafka = pipeline.spec.kafka
    found = flag or os.environ.get(ENV_BOOTSTRAP) or kafka.bootstrap_servers
    if not found and kafka.cluster:
        # The Strimzi convention for a cluster's plain listener.
        namespace = f".{kafka.namespace}" if kafka.namespace else ""
        found = f"{kafka.cluster}-kafka-bootstrap{namespace}:9092"
    if not found:
        raise ConnectionMissing(
            f"no Kafka for Pipeline {pipeline.name}: pass --bootstrap-servers, set "
            f"{ENV_BOOTSTRAP}, or set spec.kafka.bootstrapServers"
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
