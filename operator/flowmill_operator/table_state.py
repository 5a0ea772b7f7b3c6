"""Whether a Pipeline's serving tables are exact, for its status.

The workers record it in each table's status hash (flowmill.serving.status_key: a step
rebuilding the table from Kafka after its Redis state was lost, or partitions Kafka no
longer held when it did) and the API serves the same hash as X-Flowmill-Table-State. The
operator reads those hashes, one pipelined round trip per Pipeline per reconcile, from
the Pipeline's own Redis, so `kubectl get pipelines` and the TablesExact condition show
what the API's readers see.

The operator reads no Secrets (docs/operator.md, Credentials), so it reads a Redis only
when reaching it needs none: a password-less `spec.redis.url` (or the operator's
`--default-redis-url`) without a CA or client certificate from a Secret. For any other
Redis the state is Unknown and says why; the API still serves it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from flowmill import serving
from flowmill.redact import redact_url
from flowmill.spec import Pipeline
from flowmill_operator.settings import RenderSettings

TIMEOUT_S = 2.0
"""Connect and reply timeout: a Redis that does not answer costs a reconcile this much."""
RETRY_AFTER_S = 30.0
"""After a failure, a Redis is not asked again for this long (its reason is reported):
a resync runs every few seconds per Pipeline, and many Pipelines share one Redis."""


@dataclass(frozen=True)
class TableStates:
    """What the operator found: each table's serving.table_state (None: exact), or why
    it could not look (`unknown`)."""

    tables: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    unknown: str | None = None
    unknown_reason: str = ""


def reachable_url(pipeline: Pipeline, settings: RenderSettings) -> tuple[str | None, str]:
    """The Redis URL the operator may read the tables from, in the order the renderer
    picks the workers' Redis (render/context.py redis_env); else None and why not."""
    redis = pipeline.spec.redis
    why_secret = (
        "the operator reads no Secrets; the API serves each table's state "
        "(X-Flowmill-Table-State, /pipelines)"
    )
    if redis.secret_ref is not None:
        return None, f"the Redis URL is in a Secret (spec.redis.secretRef): {why_secret}"
    if redis.password_secret_ref is not None:
        return (
            None,
            f"the Redis password is in a Secret (spec.redis.passwordSecretRef): {why_secret}",
        )
    tls = redis.tls
    if tls is not None and (tls.ca_secret_ref is not None or tls.cert_secret_ref is not None):
        return (
            None,
            f"the Redis CA or client certificate is in a Secret (spec.redis.tls): {why_secret}",
        )
    if redis.url:
        return redis.url, ""
    if settings.default_redis_secret:
        return (
            None,
            f"the default Redis URL is in a Secret ({settings.default_redis_secret}): {why_secret}",
        )
    if settings.default_redis_url:
        return settings.default_redis_url, ""
    return None, "no Redis is configured"


class TableStateReader:
    """One client per Redis URL, kept across reconciles (the operator's event loop)."""

    def __init__(self, timeout: float = TIMEOUT_S, retry_after: float = RETRY_AFTER_S) -> None:
        self.timeout = timeout
        self.retry_after = retry_after
        self._clients: dict[str, aioredis.Redis] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        """URL -> (until when, monotonic; why): not asked again before then."""

    async def read(self, pipeline: Pipeline, settings: RenderSettings) -> TableStates | None:
        """None for a Pipeline that serves no tables."""
        tables = [table for _, table in pipeline.tables()]
        if not tables:
            return None
        url, why = reachable_url(pipeline, settings)
        if url is None:
            return TableStates(unknown="NoRedisAccess", unknown_reason=why)
        failed = self._failed.get(url)
        if failed is not None and time.monotonic() < failed[0]:
            return TableStates(unknown="RedisUnreachable", unknown_reason=failed[1])
        try:
            hashes = await asyncio.wait_for(self._hgetall(url, pipeline.name, tables), self.timeout)
        except Exception as err:  # any failure to ask is reported, never raised
            why = f"Redis at {redact_url(url)} did not answer: {type(err).__name__}: {err}"
            self._failed[url] = (time.monotonic() + self.retry_after, why)
            return TableStates(unknown="RedisUnreachable", unknown_reason=why)
        self._failed.pop(url, None)
        return TableStates({t: serving.table_state(h) for t, h in zip(tables, hashes, strict=True)})

    async def _hgetall(self, url: str, pipeline: str, tables: list[str]) -> list[dict[str, str]]:
        client = self._clients.get(url)
        if client is None:
            client = aioredis.from_url(
                url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                decode_responses=True,
                max_connections=4,
            )
            self._clients[url] = client
        async with client.pipeline(transaction=False) as pipe:
            for table in tables:
                pipe.hgetall(serving.status_key(pipeline, table))
            return list(await pipe.execute())

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
