"""Live updates: one Redis subscription per process, fanned out to every client.

The workers publish each write on the table's channel (flowmill.serving). Pub/sub keeps
no history, so a client that reconnects (or falls behind, or lived through a Redis
outage) would miss updates. Because every published value is absolute (a window's whole
current value, a key's whole latest event), re-sending the current state of whatever may
have changed is enough to catch up, and it works against any API replica, since the state
is in Redis rather than in this process:

- each event carries an id `{position}-{sequence}`; the position is the largest window
  start the stream has sent (window tables) or the time it was received (latest tables);
- a client resuming from an id (SSE `Last-Event-ID`, or `since=` on either transport) is
  first sent, marked `replay`, every window starting within one window size plus the
  allowed lateness before that position, or every entry updated within `replay_margin_ms`
  of it; then the live stream continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from flowmill_api.catalog import Table
from flowmill_api.errors import REDIS_ERRORS
from flowmill_api.settings import ApiSettings
from flowmill_api.store import TableStore

log = logging.getLogger("flowmill.api.live")

RESYNC = object()
"""Queued instead of a message when a subscriber must catch up from Redis: after an
outage of the subscription, or when it fell `live_queue_size` messages behind."""

REPLAY_LIMIT = 10_000
"""Most entries (or windows per key) a single catch-up re-sends."""


@dataclass(eq=False)
class Subscriber:
    channel: str
    key: str | None
    queue: asyncio.Queue[Any]


@dataclass
class _Channel:
    subscribers: set[Subscriber] = field(default_factory=set)


class LiveHub:
    """Owns the process's one pub/sub connection; reconnects with backoff and tells every
    subscriber to resync when it had to."""

    def __init__(self, client: aioredis.Redis, settings: ApiSettings) -> None:
        self.client = client
        self.settings = settings
        self.channels: dict[str, _Channel] = {}
        # A channel of our own keeps the subscription open while no client listens.
        self._own = f"fm:_api:{uuid.uuid4().hex}"
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flowmill-live-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, key: str | None) -> AsyncIterator[Subscriber]:
        sub = Subscriber(channel, key, asyncio.Queue(maxsize=self.settings.live_queue_size))
        entry = self.channels.get(channel)
        if entry is None:
            entry = self.channels[channel] = _Channel()
            if self._pubsub is not None and self.connected.is_set():
                # On failure the reconnect loop subscribes every wanted channel.
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._pubsub.subscribe(channel)
        entry.subscribers.add(sub)
        try:
            yield sub
        finally:
            entry.subscribers.discard(sub)
            if not entry.subscribers and self.channels.get(channel) is entry:
                del self.channels[channel]
                if self._pubsub is not None and self.connected.is_set():
                    with contextlib.suppress(*REDIS_ERRORS):
                        await self._pubsub.unsubscribe(channel)

    async def _close(self) -> None:
        self.connected.clear()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None

    async def _run(self) -> None:
        delay = 0.1
        had_outage = False
        while True:
            try:
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self._own, *self.channels)
                self.connected.set()
                if had_outage:
                    log.info("live updates resubscribed after a Redis outage")
                    self._broadcast_resync()
                had_outage, delay = False, 0.1
                while True:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure means: reconnect
                if not had_outage:
                    log.warning("live updates lost Redis (%s); reconnecting", err)
                had_outage = True
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _broadcast_resync(self) -> None:
        for entry in self.channels.values():
            for sub in entry.subscribers:
                _push(sub, RESYNC)

    def _dispatch(self, message: dict[str, Any]) -> None:
        entry = self.channels.get(message.get("channel", ""))
        if entry is None or message.get("type") != "message":
            return
        try:
            data = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed update on %s", message.get("channel"))
            return
        key = str(data.get("key"))
        for sub in entry.subscribers:
            if sub.key is None or sub.key == key:
                _push(sub, data)


def _push(sub: Subscriber, item: Any) -> None:
    """Queue without blocking the hub: a full queue is replaced by one RESYNC, so a slow
    client catches up from Redis instead of holding messages for everyone."""
    try:
        sub.queue.put_nowait(item)
    except asyncio.QueueFull:
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(RESYNC)


SESSION_REPLAY_SPAN_MS = 24 * 3600 * 1000
"""A session table's catch-up looks this far (or maxDuration) before the position, plus
the gap and allowedLateness, for sessions still changing."""


def _replay_margin(t: Table) -> int:
    """How long before a stream's position a window may still have changed."""
    if t.is_session:
        span = t.session_max_ms or SESSION_REPLAY_SPAN_MS
        return span + (t.session_gap_ms or 0) + (t.allowed_lateness_ms or 0)
    return (t.window_size_ms or 0) + (t.allowed_lateness_ms or 0)


def parse_position(since: str | None) -> int | None:
    """The position of an event id (`{position}-{seq}`) or a plain epoch-ms number."""
    if not since:
        return None
    head = since.strip().split("-", 1)[0]
    try:
        return int(head)
    except ValueError:
        return None


class LiveStream:
    """One client's stream: live events with ids, and catch-up from Redis on resume."""

    def __init__(
        self,
        hub: LiveHub,
        store: TableStore,
        table: Table,
        key: str | None,
        since: str | None,
    ) -> None:
        self.hub = hub
        self.store = store
        self.table = table
        self.key = key
        self.position = parse_position(since)
        self.resuming = self.position is not None
        self.seq = 0

    async def open(self) -> list[dict[str, Any]]:
        """The backlog to send first: a catch-up when resuming from an id. A new stream
        starts at the table's present position instead, so that a resync after an outage
        of the subscription re-sends only what changed since the stream began."""
        if self.resuming:
            return await self.catch_up()
        if self.table.kind == "window":
            self.position = await self.store.newest_window(self.table) or 0
        else:
            self.position = int(time.time() * 1000)
        return []

    def _event(self, data: dict[str, Any], replay: bool) -> dict[str, Any]:
        window = data.get("window")
        if self.table.kind == "window" and window:
            start = int(window["start"])
            self.position = start if self.position is None else max(self.position, start)
        elif not replay:
            self.position = int(time.time() * 1000)
        self.seq += 1
        event = {
            "id": f"{self.position if self.position is not None else 0}-{self.seq}",
            "table": self.table.name,
            "key": str(data.get("key")),
            "window": window,
            "values": data.get("values"),
            "deleted": bool(data.get("deleted", False)),
            "replay": replay,
        }
        if self.table.kind == "window":
            event["final"] = bool(data.get("final", False))
            event["watermark"] = data.get("watermark")
            if data.get("event") == "final":
                event["event"] = "final"
        return event

    async def catch_up(self) -> list[dict[str, Any]]:
        """Events re-sending whatever may have changed since `position` (oldest first)."""
        if self.position is None:
            return []
        t = self.table
        if t.kind == "window":
            margin = _replay_margin(t)
            since = self.position - margin
            keys = (
                [self.key]
                if self.key is not None
                else await self.store.keys_since(t, since, REPLAY_LIMIT)
            )
            events = []
            for key in keys:
                _, windows = await self.store.key_windows(
                    t, key, start=since, end=None, limit=REPLAY_LIMIT
                )
                for w in windows:
                    window = {"start": w["start"], "end": w["end"]}
                    if t.is_session:
                        window["last"] = w["last_event"]
                    events.append(
                        {
                            "key": key,
                            "window": window,
                            "values": w["values"],
                            "final": w["final"],
                            "watermark": w["watermark"],
                        }
                    )
            events.sort(key=lambda e: e["window"]["start"])
        else:
            since = self.position - self.hub.settings.replay_margin_ms
            if self.key is not None:
                entry = await self.store.entry(t, self.key)
                found = [entry] if entry and (entry["updated"] or 0) >= since else []
            else:
                found = await self.store.updated_since(t, since, REPLAY_LIMIT)
            events = [{"key": e["key"], "window": None, "values": e["value"]} for e in found]
        return [self._event(e, replay=True) for e in events]

    async def events(
        self, sub: Subscriber, catch_up: bool = True
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Catch-up (unless the caller sent it already), then live events; yields None
        after `heartbeat_seconds` of quiet so the transport can send a keep-alive."""
        if catch_up:
            for event in await self.catch_up():
                yield event
        heartbeat = self.hub.settings.heartbeat_seconds
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except TimeoutError:
                yield None
                continue
            if item is RESYNC:
                try:
                    replayed = await self.catch_up()
                except REDIS_ERRORS:
                    replayed = []
                for event in replayed:
                    yield event
                continue
            yield self._event(item, replay=False)
