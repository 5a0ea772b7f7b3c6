"""httpPoll: GET a JSON document every `interval`, as GBFS feeds and REST APIs publish data.

- `explode` turns one array of the document into one event per element; `stampField`
  (default `last_updated`) is copied from the document onto each element that lacks it.
- GBFS (with `honourTtl`): the next poll waits `max(interval, ttl)`, and a document whose
  top-level `last_updated` equals the previous one is skipped: it is the same snapshot.
- Conditional requests: the last ETag and Last-Modified are sent back as If-None-Match and
  If-Modified-Since; a 304 emits nothing.
- Errors (connection errors, timeouts, any 4xx/5xx, invalid JSON, a missing array) are
  logged, counted (`flowmill_events_failed` and `flowmill_source_polls{result="error"}`)
  and retried with exponential back-off: the n-th failure in a row waits
  `min(max_backoff, interval * 2^(n-1))`, half of it fixed and half random ("equal
  jitter", so many pollers of one feed spread out), or a server's Retry-After if longer.
  They never end the source.
- Credentials: `headersFrom` headers are read from the variables a Deployment sets from
  their Secrets (flowmill.spec.launch.http_header_env); a logged URL is redacted
  (userinfo passwords, `?token=`-like parameters), and so is an error that quotes it.
- Position: `{"last_updated", "etag", "last_modified"}` of the last emitted snapshot, so a
  restarted poller neither re-emits the snapshot it already wrote nor loses the validators.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

from flowmill.redact import redact_text, redact_url
from flowmill.spec.common import duration_seconds
from flowmill.spec.launch import http_header_env
from flowmill.spec.sources import HttpPollSource
from flowmill_workers.events import Event, get_field
from flowmill_workers.sources.base import Chunk, Position, Source, SourceContext

log = logging.getLogger("flowmill.source.http")

MAX_BACKOFF = 300.0


class PollFailed(Exception):
    """One poll went wrong; the message says how, for the log."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class HeaderSecretMissing(KeyError):
    """A headersFrom header's variable is not set: its Secret was not given to the pod
    (or, locally, not exported)."""

    def __str__(self) -> str:
        return str(self.args[0])


class HttpPoll(Source):
    """Polls one URL; each emitted snapshot is one chunk."""

    def __init__(self, ctx: SourceContext, max_backoff: float = MAX_BACKOFF) -> None:
        super().__init__(ctx)
        assert ctx.spec.http_poll is not None
        self.spec: HttpPollSource = ctx.spec.http_poll
        self.interval = duration_seconds(self.spec.interval)
        self.timeout = duration_seconds(self.spec.timeout)
        self.max_backoff = max_backoff
        self.last_updated: Any = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.ttl: float = 0.0
        self.failures = 0
        self.headers = {**self.spec.headers, **secret_headers(ctx.spec.name, self.spec)}
        self.shown_url = redact_url(self.spec.url)
        """The URL as logs show it."""
        self._jitter = random.Random()
        self.polls = Counter(
            "flowmill_source_polls",
            "HTTP polls by result: ok, unchanged, not_modified, error.",
            ["pipeline", "step", "result"],
            registry=ctx.metrics.registry,
        )

    def restore(self, position: Position | None) -> None:
        if position:
            self.last_updated = position.get("last_updated")
            self.etag = position.get("etag")
            self.last_modified = position.get("last_modified")

    async def chunks(self) -> AsyncIterator[Chunk]:
        async with httpx.AsyncClient(
            timeout=self.timeout, headers=self.headers, follow_redirects=True
        ) as client:
            while True:
                try:
                    events = await self._poll(client)
                except PollFailed as err:
                    delay = self._failed(err)
                else:
                    self.failures = 0
                    delay = self._next_delay()
                    if events is not None:
                        yield Chunk(self.encoder.records(events), self._position())
                await asyncio.sleep(delay)

    async def _poll(self, client: httpx.AsyncClient) -> list[Event] | None:
        """The events of a new snapshot, or None when it is the one already emitted."""
        conditional = {}
        if self.etag:
            conditional["If-None-Match"] = self.etag
        if self.last_modified:
            conditional["If-Modified-Since"] = self.last_modified
        try:
            response = await client.get(self.spec.url, headers=conditional)
        except httpx.TimeoutException:
            raise PollFailed(f"timed out after {self.timeout:g}s") from None
        except httpx.HTTPError as err:
            raise PollFailed(f"{type(err).__name__}: {redact_text(str(err))}") from None
        if response.status_code == 304:
            self._count("not_modified")
            return None
        if response.status_code >= 400:
            raise PollFailed(f"HTTP {response.status_code}", _retry_after(response))
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError as err:
            raise PollFailed(f"invalid JSON: {err}") from None
        events = self._events(document)
        # Validators describe the latest usable response (a server may drop one), and are
        # only taken once the body proved usable.
        self.etag = response.headers.get("etag")
        self.last_modified = response.headers.get("last-modified")
        if not self._is_new_snapshot(document):
            self._count("unchanged")
            return None
        self._count("ok")
        return events

    def _events(self, document: Any) -> list[Event]:
        if self.spec.explode is None:
            return [document if isinstance(document, dict) else {"value": document}]
        items = get_field(document, self.spec.explode) if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise PollFailed(f"{self.spec.explode!r} is not an array in the document")
        stamp_field = self.spec.stamp_field
        stamp = get_field(document, stamp_field) if stamp_field else None
        events = []
        for item in items:
            event = item if isinstance(item, dict) else {"value": item}
            if stamp_field and stamp is not None and get_field(event, stamp_field) is None:
                _set_field(event, stamp_field, stamp)
            events.append(event)
        return events

    def _is_new_snapshot(self, document: Any) -> bool:
        if not (self.spec.honour_ttl and isinstance(document, dict)):
            return True
        ttl = document.get("ttl")
        if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl >= 0:
            self.ttl = float(ttl)
        updated = document.get("last_updated")
        if updated is not None and updated == self.last_updated:
            return False
        self.last_updated = updated
        return True

    def _next_delay(self) -> float:
        return max(self.interval, self.ttl) if self.spec.honour_ttl else self.interval

    def _failed(self, err: PollFailed) -> float:
        self.failures += 1
        self.failed()
        self._count("error")
        ceiling = min(self.max_backoff, self.interval * 2 ** (self.failures - 1))
        delay = ceiling / 2 + self._jitter.uniform(0, ceiling / 2)
        if err.retry_after is not None:
            delay = max(delay, min(err.retry_after, self.max_backoff))
        log.warning(
            "poll of %s failed (%s, %d in a row); retrying in %.1fs",
            self.shown_url,
            err,
            self.failures,
            delay,
        )
        return delay

    def _position(self) -> Position:
        return {
            "last_updated": self.last_updated,
            "etag": self.etag,
            "last_modified": self.last_modified,
        }

    def _count(self, result: str) -> None:
        self.polls.labels(self.ctx.pipeline, self.name, result).inc()


def secret_headers(source: str, spec: HttpPollSource) -> dict[str, str]:
    """The headersFrom headers with their values from the environment."""
    headers = {}
    for header in spec.headers_from or {}:
        variable = http_header_env(source, header)
        value = os.environ.get(variable)
        if value is None:
            raise HeaderSecretMissing(
                f"source {source}: header {header} (httpPoll.headersFrom) comes from "
                f"{variable}, which is not set"
            )
        headers[header] = value
    return headers


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _set_field(event: Event, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = event
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value
