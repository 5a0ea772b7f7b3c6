"""The hottest reads served without FastAPI's per-request machinery.

A window lookup is one Redis round trip; FastAPI's routing, dependency solving and
parameter validation cost as much CPU again, which halves what one process serves. This
pure-ASGI layer answers the hottest routes (a key's current window, its latest N
windows, the current window's top keys, one latest-state entry) when their parameters
are valid: it only reads the request and sends the answer. What is answered, 404s and
422s on the table included, comes from flowmill_api.queries, which the routes call too;
parameters are read by flowmill_api.params, as the routes read them. A request with a
parameter the route would refuse, or one it does not know, falls through to FastAPI, so
parameter 422s and the OpenAPI document keep one source: the routes.

It sits in front of FastAPI (FlowmillApp.__call__), not inside its middleware stack:
FastAPI's error, exception-telemetry and body-limit layers and the CORS and security
middleware cost more per request than the answer itself. What those layers would do to
one of these requests is done here: the request is counted in the metrics as the
MetricsMiddleware counts it, API keys and the rate limit are checked by the same Gate
(one token bucket per client for both paths), and trusted proxies are applied by uvicorn
before any app sees the request. What cannot be done as cheaply (a CORS request, i.e.
one with an Origin header while CORS is on; an unexpected error) goes to FastAPI, whose
answer is then the answer. GET bodies are never read, so the body limit cannot apply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowmill_api import queries
from flowmill_api.errors import REDIS_ERRORS, ApiError, api_error_response, redis_error_response
from flowmill_api.metrics import UNMATCHED
from flowmill_api.params import DEFAULT_COUNT, DEFAULT_ORDER, PAGE, SORT_ORDERS
from flowmill_api.responses import dumps
from flowmill_api.security import ADMITTED, Gate
from flowmill_api.state import AppState

Query = dict[str, str]
Answer = partial[Coroutine[Any, Any, queries.Body]]
"""A query with its arguments, the state first (a stamp takes the same ones)."""
_STATE_HEADER = queries.STATE_HEADER.lower().encode()


class Handler(Protocol):
    """The query to answer a request with (not started yet: the key and rate checks come
    first), or None when the route must answer it."""

    def __call__(self, state: AppState, groups: tuple[str, ...], query: Query) -> Answer | None: ...


def _count(query: Query) -> int | None:
    text = query.pop("n", None)
    return DEFAULT_COUNT if text is None else PAGE.accept(text)


def _current(state: AppState, groups: tuple[str, ...], query: Query) -> Answer | None:
    return None if query else partial(queries.current_window, state, *groups)


def _latest(state: AppState, groups: tuple[str, ...], query: Query) -> Answer | None:
    n = _count(query)
    if n is None or query:
        return None
    pipeline, table, key = groups
    return partial(queries.latest_windows, state, pipeline, table, key, n)


def _top(state: AppState, groups: tuple[str, ...], query: Query) -> Answer | None:
    by = query.pop("by", None)
    n = _count(query)
    order = query.pop("order", DEFAULT_ORDER)
    if n is None or order not in SORT_ORDERS or query:
        return None
    pipeline, table = groups
    return partial(queries.top_keys, state, pipeline, table, None, by, n, order)


def _entry(state: AppState, groups: tuple[str, ...], query: Query) -> Answer | None:
    return None if query else partial(queries.entry, state, *groups)


_SEGMENT = "([^/]+)"
_TABLE = f"^/pipelines/{_SEGMENT}/tables/{_SEGMENT}"
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (
        "/pipelines/{pipeline}/tables/{table}/keys/{key}/windows/current",
        re.compile(f"{_TABLE}/keys/{_SEGMENT}/windows/current$"),
        _current,
    ),
    (
        "/pipelines/{pipeline}/tables/{table}/keys/{key}/windows/latest",
        re.compile(f"{_TABLE}/keys/{_SEGMENT}/windows/latest$"),
        _latest,
    ),
    (
        "/pipelines/{pipeline}/tables/{table}/windows/current/top",
        re.compile(f"{_TABLE}/windows/current/top$"),
        _top,
    ),
    (
        "/pipelines/{pipeline}/tables/{table}/entries/{key}",
        re.compile(f"{_TABLE}/entries/{_SEGMENT}$"),
        _entry,
    ),
]


Stamp = Callable[[], tuple[object, object] | None]
_STAMPS: dict[str, Callable[..., tuple[object, object] | None]] = {
    _ROUTES[0][0]: queries.current_window_stamp,
    _ROUTES[2][0]: queries.top_keys_stamp,
}
"""Routes whose rendered answer is kept while what it was made of is (queries' stamps)."""
MAX_RENDERED = 50_000
"""Rendered answers kept; past it they are dropped (hot keys render again)."""


class FastPath:
    """Serves the routes above when it can; otherwise hands the request to `app` (the
    FastAPI app's own middleware stack and routes).

    A key's current window or a window's top keys answered from memory
    (flowmill_api.versions) is also kept
    rendered, body bytes and state header, while the kept answer and table status it
    was made of are the same objects: rendering (copies, the state, orjson) was most of
    this path's own cost on a cache hit. A repeat of the same request (path and query
    string) is then answered from that rendering before any routing or parsing: in
    process, 7.8 instead of 19.8 us a lookup, a bare app 1.7 (`benchmarks/api_cost.py`,
    2026-12-03, on a busy machine)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, gate: Gate | None) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.gate = gate
        self._rendered: dict[tuple[str, tuple[Any, ...]], tuple[Any, bytes, bytes]] = {}
        self._kept: dict[tuple[str, bytes], _Kept] = {}
        """Request (path, query string) -> its rendered answer, while that holds: a
        repeated request is answered without routing, parsing or rendering (most of
        this path's own cost when the answer is in memory)."""
        # Starlette's State answers attributes through __getattr__, which costs more than
        # the dict lookup it wraps (read on every request).
        self._app_state: dict[str, Any] = fastapi_app.state._state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState | None = self._app_state.get("flowmill")
        if state is not None and scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if not state.settings.cors_origins:
                kept = self._kept.get((path, scope["query_string"]))
                if kept is not None and kept.state is state and _same(kept.stamp(), kept.before):
                    await self._send_kept(state, kept, scope, send)
                    return
            for template, pattern, handler in _ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                if state.settings.cors_origins:
                    if _has_origin(scope):
                        break  # CORSMiddleware's headers: FastAPI's path adds them
                    send = partial(_vary_origin, send)
                groups = match.groups()
                answer = handler(state, groups, _query(scope))
                if answer is not None:
                    stamp_of = _STAMPS.get(template)
                    stamp = None if stamp_of is None else partial(stamp_of, *answer.args)
                    if await self._serve(state, template, answer, scope, send, stamp):
                        self._keep(state, template, answer, scope, stamp)
                        return
                break
        await self.app(scope, receive, send)

    async def _send_kept(self, state: AppState, kept: _Kept, scope: Scope, send: Send) -> None:
        """What _serve sends for the same request while its answer is kept."""
        started = time.perf_counter()
        metrics = state.metrics
        if self.gate is not None:
            status = await self.gate.check(scope, send)
            if status is not None:
                metrics.observe("GET", UNMATCHED, status, time.perf_counter() - started)
                return
        await send({"type": "http.response.start", "status": 200, "headers": kept.headers})
        await send({"type": "http.response.body", "body": kept.payload})
        metrics.observe("GET", kept.template, 200, time.perf_counter() - started)

    def _keep(
        self, state: AppState, template: str, answer: Answer, scope: Scope, stamp: Stamp | None
    ) -> None:
        """After _serve answered a request: keep the answer for its repeats if _render
        kept it rendered (it did only if nothing it was made of changed meanwhile)."""
        if stamp is None or state.settings.cors_origins:
            return
        rendered = self._rendered.get((template, answer.args[1:]))
        if rendered is None or not _same(rendered[0], stamp()):
            return
        before, payload, table_state = rendered
        if len(self._kept) >= MAX_RENDERED:
            self._kept.clear()
        self._kept[(scope["path"], scope["query_string"])] = _Kept(
            state, template, stamp, before, _headers(payload, table_state), payload
        )

    async def _serve(
        self,
        state: AppState,
        template: str,
        answer: Answer,
        scope: Scope,
        send: Send,
        stamp: Stamp | None = None,
    ) -> bool:
        """Answers the request (True), or leaves it untouched for FastAPI (False)."""
        started = time.perf_counter()
        metrics = state.metrics
        if self.gate is not None:
            status = await self.gate.check(scope, send)
            if status is not None:  # rejected before routing, so unmatched as in FastAPI
                metrics.observe("GET", UNMATCHED, status, time.perf_counter() - started)
                return True
            scope[ADMITTED] = True  # a fall-through is not checked (nor charged) twice
        retry_after = state.settings.retry_after_seconds
        error: Response
        try:
            payload, table_state = await self._render(template, answer, stamp)
        except ApiError as err:
            error = api_error_response(err, retry_after)
        except REDIS_ERRORS as err:
            error = redis_error_response(err, retry_after, scope["path"])
        except Exception:
            return False  # FastAPI's path answers it (its 500 and its logging)
        else:
            headers = _headers(payload, table_state)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            metrics.observe("GET", template, 200, time.perf_counter() - started)
            return True
        await error(scope, _no_receive, send)
        if error.status_code == 503:  # as MetricsMiddleware counts them
            metrics.redis_errors.inc()
        metrics.observe("GET", template, error.status_code, time.perf_counter() - started)
        return True

    async def _render(
        self, template: str, answer: Answer, stamp: Stamp | None
    ) -> tuple[bytes, bytes]:
        """The answer's body and state header, kept rendered while its stamp holds."""
        before = None if stamp is None else stamp()
        key = (template, answer.args[1:])  # the query's arguments but the state
        if before is not None:
            kept = self._rendered.get(key)
            if kept is not None and _same(kept[0], before):
                return kept[1], kept[2]
        body = await answer()
        rendered = dumps(body), queries.state_header(body).encode()
        # Kept only if nothing it is made of changed while it was answered (a read, a
        # write announced, the status read again): then it was made of `before`.
        if before is not None and stamp is not None and _same(stamp(), before):
            if len(self._rendered) >= MAX_RENDERED:
                self._rendered.clear()
            self._rendered[key] = (before, *rendered)
        return rendered


@dataclass(frozen=True, slots=True)
class _Kept:
    """A request's rendered answer and what it was made of (its stamp's objects)."""

    state: AppState
    template: str
    stamp: Stamp
    before: Any
    headers: list[tuple[bytes, bytes]]
    """Shared by every answer sent from it: ASGI servers copy headers, never change them."""
    payload: bytes


def _headers(payload: bytes, table_state: bytes) -> list[tuple[bytes, bytes]]:
    """In the order the routes' JsonResponse sends them (its headers, then length and type)."""
    return [
        (_STATE_HEADER, table_state),
        (b"content-length", str(len(payload)).encode()),
        (b"content-type", b"application/json"),
    ]


def _same(a: Any, b: Any) -> bool:
    """Two stamps (pairs) of the same objects: identity, as equal contents read anew
    are another answer."""
    return a is not None and b is not None and a[0] is b[0] and a[1] is b[1]


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])


async def _vary_origin(send: Send, message: Message) -> None:
    """What CORSMiddleware adds to an answer to a request without an Origin: caches must
    keep it apart from the answers to requests with one."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", ()), (b"vary", b"Origin")]
    await send(message)


def _query(scope: Scope) -> Query:
    """The query parameters as Starlette reads them (blank values kept, the last of a
    repeated name wins), so both paths see the same values."""
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}
