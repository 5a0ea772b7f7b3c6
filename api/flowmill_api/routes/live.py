"""Live updates of a table (optionally one key) over Server-Sent Events and WebSocket.

SSE is what the dashboard and `curl -N` use: it reconnects by itself and sends
`Last-Event-ID`, from which the stream re-sends what may have changed (see
flowmill_api.live). WebSocket clients pass the last id as `since=`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from flowmill_api.catalog import Table
from flowmill_api.errors import REDIS_ERRORS, ApiError, NotFound
from flowmill_api.live import LiveStream, Subscriber
from flowmill_api.routes.common import ERRORS, PipelineName, TableName
from flowmill_api.state import AppState, app_state

router = APIRouter(tags=["live"])

BASE = "/pipelines/{pipeline}/tables/{table}"
RETRY_MS = 2000
"""How long an EventSource waits before reconnecting."""
CONNECT_WAIT = 2.0
"""Seconds a new stream waits for the process's Redis subscription before a 503."""

KeyFilter = Annotated[str | None, Query(description="Only this key's updates.")]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Resume after this event id (or epoch ms); SSE clients may send "
        "Last-Event-ID instead.",
    ),
]


class LiveUnavailable(ApiError):
    status_code = 503
    error = "redis_unavailable"


def _live_table(state: AppState, pipeline: str, table: str) -> Table:
    t = state.catalog.table(pipeline, table)
    if not t.publish:
        raise NotFound(
            "table",
            table,
            detail=f"table '{table}' does not publish live updates (sink.redis.publish: false)",
        )
    return t


async def _subscribed(state: AppState) -> None:
    try:
        await asyncio.wait_for(state.hub.connected.wait(), CONNECT_WAIT)
    except TimeoutError:
        raise LiveUnavailable("Redis is unreachable: live updates cannot start") from None


def _sse(event: dict[str, Any] | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    kind = event.pop("event", "update").encode()
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event["id"].encode(), kind, orjson.dumps(event))


@router.get(
    f"{BASE}/events",
    summary="Live updates as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An event stream: `ready`, then `update` events whose data is a "
            "LiveEvent (see the schema), a `final` event (same data) when a window becomes "
            "final; comments as keep-alives.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **{k: v for k, v in ERRORS.items() if k in (404, 503)},
    },
)
async def events(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    key: KeyFilter = None,
    since: Since = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    state = app_state(request)
    t = _live_table(state, pipeline, table)
    await _subscribed(state)
    stream = LiveStream(state.hub, state.store, t, key, last_event_id or since)
    # Subscribe before catching up, so nothing published meanwhile is missed (a value
    # sent twice is harmless: values are absolute). Catching up before the response
    # starts turns a Redis outage into a 503.
    stack = contextlib.AsyncExitStack()
    sub = await stack.enter_async_context(state.hub.subscribe(t.channel, key))
    try:
        backlog = await stream.open()
    except BaseException:
        await stack.aclose()
        raise
    gauge = state.metrics.live_streams.labels("sse")

    async def body() -> AsyncIterator[bytes]:
        ready = {"table": t.name, "key": key, "position": stream.position}
        yield b"retry: %d\nevent: ready\ndata: %s\n\n" % (RETRY_MS, orjson.dumps(ready))
        for event in backlog:
            yield _sse(event)
        async for live_event in stream.events(sub, catch_up=False):
            yield _sse(live_event)

    async def cleanup() -> None:
        gauge.dec()
        await stack.aclose()

    gauge.inc()
    return _EventStream(
        body(),
        cleanup,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _EventStream(StreamingResponse):
    """Runs `cleanup` however the response ends (finished, client gone, cancelled)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


@router.websocket(f"{BASE}/ws")
async def websocket(
    ws: WebSocket,
    pipeline: str,
    table: str,
    key: KeyFilter = None,
    since: Since = None,
) -> None:
    """Live updates over WebSocket: JSON messages `{"type": "ready"|"update"|"ping"|
    "error", ...}`; an update carries the LiveEvent fields."""
    state = app_state(ws)
    await ws.accept()
    async with contextlib.AsyncExitStack() as stack:
        try:
            t = _live_table(state, pipeline, table)
            await _subscribed(state)
            stream = LiveStream(state.hub, state.store, t, key, since)
            sub = await stack.enter_async_context(state.hub.subscribe(t.channel, key))
            backlog = await stream.open()
        except ApiError as err:
            await ws.send_text(_ws({"type": "error", **err.body()}))
            await ws.close(code=4404 if err.status_code == 404 else 1013, reason=err.detail[:120])
            return
        except REDIS_ERRORS:
            await ws.send_text(_ws({"type": "error", "error": "redis_unavailable"}))
            await ws.close(code=1013, reason="Redis is unreachable")
            return
        gauge = state.metrics.live_streams.labels("websocket")
        gauge.inc()
        sender = asyncio.create_task(_send(ws, t, key, stream, sub, backlog))
        receiver = asyncio.create_task(_drain(ws))
        try:
            # Whichever ends first (the client closed, or sending failed) ends both.
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gauge.dec()
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            with contextlib.suppress(RuntimeError):
                await ws.close()


async def _send(
    ws: WebSocket,
    t: Table,
    key: str | None,
    stream: LiveStream,
    sub: Subscriber,
    backlog: list[dict[str, Any]],
) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(_ws({"type": "ready", "table": t.name, "key": key}))
        for event in backlog:
            await ws.send_text(_ws({"type": "update", **event}))
        async for live_event in stream.events(sub, catch_up=False):
            if live_event is None:
                message: dict[str, Any] = {"type": "ping"}
            else:
                message = {"type": live_event.pop("event", "update"), **live_event}
            await ws.send_text(_ws(message))


def _ws(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) client messages, so a close from the client is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await ws.receive_text()
