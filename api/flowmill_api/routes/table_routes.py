"""One builder for the routes of a table (windows, sessions, latest state): each is a path
below the table, a query of flowmill_api.queries, a response model and the parameters
it passes on by name; what every one of them does with those is written once here.

FastAPI reads an endpoint's parameters from its signature, so the endpoint gets the
route's own signature (`__signature__`): the URL, parameters, validation, 422s and the
OpenAPI document are what a hand-written function with those parameters would give.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from flowmill_api import queries
from flowmill_api.params import DEFAULT_LIMIT, Final, Limit, Offset
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import KeyName, PipelineName, TableName, table_response
from flowmill_api.state import app_state

BASE = "/pipelines/{pipeline}/tables/{table}"

TableQuery = Callable[..., Awaitable[queries.Body]]
"""A query of flowmill_api.queries: the app state, then `pipeline`, `table` and the
route's parameters, all by name."""


def param(
    name: str, annotation: object, default: object = inspect.Parameter.empty
) -> inspect.Parameter:
    """A route parameter: its name (the query's), its type with FastAPI's metadata, and
    its default (none: required)."""
    # Keyword-only, so a required parameter may follow one with a default.
    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, kind, annotation=annotation, default=default)


KEY = param("key", KeyName)
OFFSET = param("offset", Offset, 0)
LIMIT = param("limit", Limit, DEFAULT_LIMIT)
FINAL = param("final", Final, None)
_TABLE = (param("pipeline", PipelineName), param("table", TableName))
_REQUEST = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)


def table_route(
    router: APIRouter,
    path: str,
    name: str,
    model: type[BaseModel],
    summary: str,
    query: TableQuery,
    *params: inspect.Parameter,
) -> None:
    """GET BASE + `path`, answering `query(state, pipeline=…, table=…, **params)` with
    table_response. `name` is the operation's (its OpenAPI operationId derives from it)."""

    # No docstring: FastAPI would publish it as every operation's description.
    async def endpoint(request: Request, **values: Any) -> JsonResponse:
        return table_response(await query(app_state(request), **values))

    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [_REQUEST, *_TABLE, *params], return_annotation=JsonResponse
    )
    router.get(BASE + path, response_model=model, summary=summary)(endpoint)
