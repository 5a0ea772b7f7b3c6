"""Window tables: a key's current window, its latest N, a time range, one window, the
table's windows, its keys, and the top keys of a window by an aggregate.

StreamPulse's `/metrics/region/{id}?window=1m` is
`/pipelines/{p}/tables/{t}/keys/{id}/windows/current` here (docs/api.md maps the seeds).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from flowmill_api import queries
from flowmill_api.models import KeyPage, TableWindowList, TopKeys, Window, WindowList
from flowmill_api.params import (
    DEFAULT_COUNT,
    DEFAULT_LIMIT,
    DEFAULT_ORDER,
    By,
    From,
    KeyCount,
    Limit,
    Offset,
    Order,
    To,
    WindowCount,
    WindowStart,
)
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, KeyName, PipelineName, TableName
from flowmill_api.state import app_state

router = APIRouter(tags=["windows"], responses=ERRORS)

BASE = "/pipelines/{pipeline}/tables/{table}"


@router.get(
    f"{BASE}/keys",
    response_model=KeyPage,
    summary="The table's keys, most recently active first",
)
async def list_keys(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> JsonResponse:
    body = await queries.list_keys(app_state(request), pipeline, table, offset, limit)
    return JsonResponse(body)


@router.get(
    f"{BASE}/keys/{{key}}/windows/current",
    response_model=Window,
    summary="A key's current (newest) window",
)
async def current_window(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName
) -> JsonResponse:
    return JsonResponse(await queries.current_window(app_state(request), pipeline, table, key))


@router.get(
    f"{BASE}/keys/{{key}}/windows/latest",
    response_model=WindowList,
    summary="A key's latest N windows, oldest first",
)
async def latest_windows(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    key: KeyName,
    n: WindowCount = DEFAULT_COUNT,
) -> JsonResponse:
    body = await queries.latest_windows(app_state(request), pipeline, table, key, n)
    return JsonResponse(body)


@router.get(
    f"{BASE}/keys/{{key}}/windows",
    response_model=WindowList,
    summary="A key's windows starting in a time range, oldest first",
)
async def window_range(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    key: KeyName,
    from_: From = None,
    to: To = None,
    limit: Limit = DEFAULT_LIMIT,
) -> JsonResponse:
    state = app_state(request)
    return JsonResponse(await queries.window_range(state, pipeline, table, key, from_, to, limit))


@router.get(
    f"{BASE}/keys/{{key}}/windows/{{start}}",
    response_model=Window,
    summary="One window of a key, by its start",
)
async def one_window(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName, start: WindowStart
) -> JsonResponse:
    body = await queries.one_window(app_state(request), pipeline, table, key, start)
    return JsonResponse(body)


@router.get(
    f"{BASE}/windows",
    response_model=TableWindowList,
    summary="The table's windows (any key), newest first",
)
async def table_windows(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    from_: From = None,
    to: To = None,
    limit: Limit = DEFAULT_LIMIT,
) -> JsonResponse:
    body = await queries.table_windows(app_state(request), pipeline, table, from_, to, limit)
    return JsonResponse(body)


@router.get(
    f"{BASE}/windows/current/top",
    response_model=TopKeys,
    summary="Top keys of the table's newest window by an aggregate",
)
async def current_top(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    by: By = None,
    n: KeyCount = DEFAULT_COUNT,
    order: Order = DEFAULT_ORDER,
) -> JsonResponse:
    state = app_state(request)
    return JsonResponse(await queries.top_keys(state, pipeline, table, None, by, n, order))


@router.get(
    f"{BASE}/windows/{{start}}/top",
    response_model=TopKeys,
    summary="Top keys of one window by an aggregate",
)
async def window_top(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    start: WindowStart,
    by: By = None,
    n: KeyCount = DEFAULT_COUNT,
    order: Order = DEFAULT_ORDER,
) -> JsonResponse:
    state = app_state(request)
    return JsonResponse(await queries.top_keys(state, pipeline, table, start, by, n, order))
