"""The hottest reads served without FastAPI's per-request machinery.

A window lookup is one Redis round trip; FastAPI's routing, dependency solving and
parameter validation cost as much CPU again, which halves what one process serves. This
pure-ASGI layer answers the plain, well-formed forms of the hottest routes itself (a
key's current window, its latest N windows, the current window's top keys, one
latest-state entry) through the same store and error code as the routes. Anything else
(an unknown pipeline or table, an unexpected or invalid parameter) falls through to
FastAPI, so 404/422 bodies and the OpenAPI document keep one source: the routes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from flowmill_api.errors import REDIS_DOWN_ERRORS, NotFound, redis_unavailable_response
from flowmill_api.state import MAX_PAGE, AppState

_SEGMENT = "([^/]+)"
_TABLE = f"^/pipelines/{_SEGMENT}/tables/{_SEGMENT}"
Handler = Callable[[AppState, tuple[str, ...], dict[str, str]], Awaitable[Any]]


def _int(text: str | None, default: int, low: int, high: int) -> int | None:
    if text is None:
        return default
    if not text.isdigit():
        return None
    value = int(text)
    return value if low <= value <= high else None


async def _current(state: AppState, groups: tuple[str, ...], query: dict[str, str]) -> Any:
    if query:
        return None
    pipeline, table, key = groups
    t = state.catalog.table(pipeline, table, "window")
    _, windows = await state.store.key_windows(t, key, last=1)
    if not windows:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return windows[-1]


async def _latest(state: AppState, groups: tuple[str, ...], query: dict[str, str]) -> Any:
    n = _int(query.pop("n", None), 10, 1, MAX_PAGE)
    if n is None or query:
        return None
    pipeline, table, key = groups
    t = state.catalog.table(pipeline, table, "window")
    exists, windows = await state.store.key_windows(t, key, last=n)
    if not exists:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return {"pipeline": pipeline, "table": table, "key": key, "windows": windows}


async def _top(state: AppState, groups: tuple[str, ...], query: dict[str, str]) -> Any:
    pipeline, table = groups
    t = state.catalog.table(pipeline, table, "window")
    by = query.pop("by", None) or t.aggregates[0].name
    n = _int(query.pop("n", None), 10, 1, MAX_PAGE)
    order = query.pop("order", "desc")
    if n is None or query or order not in ("desc", "asc") or t.aggregate(by) is None:
        return None
    found = await state.store.top(t, None, by, n, order)
    if found is None:
        return None  # no windows yet: the route words that 404
    start, keys = found
    end = start + (t.window_size_ms or 0)
    return {"pipeline": pipeline, "table": table, "start": start, "end": end, "by": by,
            "order": order, "keys": keys}  # fmt: skip


async def _entry(state: AppState, groups: tuple[str, ...], query: dict[str, str]) -> Any:
    if query:
        return None
    pipeline, table, key = groups
    t = state.catalog.table(pipeline, table, "latest")
    entry = await state.store.entry(t, key)
    if entry is None:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return entry


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


class FastPath:
    """Serves the routes above when it can; otherwise hands the request to the app."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._route_objects: dict[str, BaseRoute] | None = None

    def _route(self, template: str) -> BaseRoute | None:
        if self._route_objects is None:
            self._route_objects = {
                getattr(r, "path", ""): r for r in _all_routes(self.fastapi_app.router.routes)
            }
        return self._route_objects.get(template)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            for template, pattern, handler in _ROUTES:
                match = pattern.match(path)
                if match is not None:
                    if await self._serve(scope, send, template, handler, match.groups()):
                        return
                    break
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, send: Send, template: str, handler: Handler, groups: tuple[str, ...]
    ) -> bool:
        state: AppState | None = getattr(self.fastapi_app.state, "flowmill", None)
        raw_query = scope.get("query_string", b"")
        query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else {}
        if state is None or len(query) > 3 or "api_key" in query:
            return False
        status, headers = 200, [(b"content-type", b"application/json")]
        try:
            body = await handler(state, groups, query)
        except NotFound as err:
            if err.fields.get("resource") != "key":
                return False  # unknown pipeline/table: the route answers
            status, body = 404, err.body()
        except REDIS_DOWN_ERRORS as err:
            response = redis_unavailable_response(state.settings.retry_after_seconds, err)
            scope["route"] = self._route(template)
            await response(scope, _no_receive, send)
            return True
        if body is None:
            return False
        scope["route"] = self._route(template)  # metrics label it like the route
        payload = orjson.dumps(body)
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return True


def _all_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Routes, looking into included routers (FastAPI keeps them nested)."""
    out: list[BaseRoute] = []
    for route in routes:
        nested = getattr(route, "original_router", None)
        out += _all_routes(nested.routes) if nested is not None else [route]
    return out


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}
