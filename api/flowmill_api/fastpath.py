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
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from flowmill_api import queries
from flowmill_api.errors import REDIS_ERRORS, ApiError, api_error_response, redis_error_response
from flowmill_api.params import DEFAULT_COUNT, DEFAULT_ORDER, PAGE, SORT_ORDERS
from flowmill_api.responses import dumps
from flowmill_api.state import AppState

Query = dict[str, str]


class Handler(Protocol):
    """The query to answer a request with, or None when the route must answer it."""

    def __call__(
        self, state: AppState, groups: tuple[str, ...], query: Query
    ) -> Awaitable[queries.Body] | None: ...


def _count(query: Query) -> int | None:
    text = query.pop("n", None)
    return DEFAULT_COUNT if text is None else PAGE.accept(text)


def _current(state: AppState, groups: tuple[str, ...], query: Query) -> Awaitable[Any] | None:
    return None if query else queries.current_window(state, *groups)


def _latest(state: AppState, groups: tuple[str, ...], query: Query) -> Awaitable[Any] | None:
    n = _count(query)
    if n is None or query:
        return None
    pipeline, table, key = groups
    return queries.latest_windows(state, pipeline, table, key, n)


def _top(state: AppState, groups: tuple[str, ...], query: Query) -> Awaitable[Any] | None:
    by = query.pop("by", None)
    n = _count(query)
    order = query.pop("order", DEFAULT_ORDER)
    if n is None or order not in SORT_ORDERS or query:
        return None
    pipeline, table = groups
    return queries.top_keys(state, pipeline, table, None, by, n, order)


def _entry(state: AppState, groups: tuple[str, ...], query: Query) -> Awaitable[Any] | None:
    return None if query else queries.entry(state, *groups)


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
        state: AppState | None = getattr(self.fastapi_app.state, "flowmill", None)
        if state is not None and scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            for template, pattern, handler in _ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                answer = handler(state, match.groups(), _query(scope))
                if answer is not None:
                    scope["route"] = self._route(template)  # metrics label it like the route
                    await self._send(state, scope, send, answer)
                    return
                break
        await self.app(scope, receive, send)

    async def _send(
        self, state: AppState, scope: Scope, send: Send, answer: Awaitable[queries.Body]
    ) -> None:
        retry_after = state.settings.retry_after_seconds
        error: Response
        try:
            payload = dumps(await answer)
        except ApiError as err:
            error = api_error_response(err, retry_after)
        except REDIS_ERRORS as err:
            error = redis_error_response(err, retry_after, scope["path"])
        else:
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await error(scope, _no_receive, send)


def _query(scope: Scope) -> Query:
    """The query parameters as Starlette reads them (blank values kept, the last of a
    repeated name wins), so both paths see the same values."""
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


def _all_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Routes, looking into included routers (FastAPI keeps them nested)."""
    out: list[BaseRoute] = []
    for route in routes:
        nested = getattr(route, "original_router", None)
        out += _all_routes(nested.routes) if nested is not None else [route]
    return out


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}
