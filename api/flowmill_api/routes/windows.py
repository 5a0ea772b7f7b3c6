"""Window tables: a key's current window, its latest N, a time range, one window, the
table's windows, its keys, and the top keys of a window by an aggregate.

StreamPulse's `/metrics/region/{id}?window=1m` is
`/pipelines/{p}/tables/{t}/keys/{id}/windows/current` here (docs/api.md maps the seeds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from flowmill_api.catalog import Table
from flowmill_api.errors import InvalidParameter, NotFound
from flowmill_api.models import KeyPage, TableWindowList, TopKeys, Window, WindowList
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, KeyName, Limit, Offset, PipelineName, TableName
from flowmill_api.state import MAX_PAGE, TIME_BOUND, app_state

router = APIRouter(tags=["windows"], responses=ERRORS)

BASE = "/pipelines/{pipeline}/tables/{table}"
EpochMs = Annotated[int, Path(ge=-TIME_BOUND, le=TIME_BOUND, description="Window start (ms).")]
From = Annotated[
    int | None,
    Query(alias="from", ge=-TIME_BOUND, le=TIME_BOUND, description="Earliest start (ms)."),
]
To = Annotated[
    int | None, Query(ge=-TIME_BOUND, le=TIME_BOUND, description="Latest start (ms), inclusive.")
]


def _check_range(from_: int | None, to: int | None) -> None:
    if from_ is not None and to is not None and from_ > to:
        raise InvalidParameter("from", f"{from_} is after to={to}")


def _key_missing(t: Table, key: str) -> NotFound:
    return NotFound("key", key, pipeline=t.pipeline, table=t.name)


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
    limit: Limit = 100,
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    total, keys = await state.store.keys(t, offset, limit)
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "total": total,
            "offset": offset,
            "limit": limit,
            "keys": keys,
        }
    )


@router.get(
    f"{BASE}/keys/{{key}}/windows/current",
    response_model=Window,
    summary="A key's current (newest) window",
)
async def current_window(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    _, windows = await state.store.key_windows(t, key, last=1)
    if not windows:
        raise _key_missing(t, key)
    return JsonResponse(windows[-1])


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
    n: Annotated[int, Query(ge=1, le=MAX_PAGE, description="How many windows.")] = 10,
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    exists, windows = await state.store.key_windows(t, key, last=n)
    if not exists:
        raise _key_missing(t, key)
    return JsonResponse({"pipeline": pipeline, "table": table, "key": key, "windows": windows})


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
    limit: Limit = 100,
) -> JsonResponse:
    _check_range(from_, to)
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    exists, windows = await state.store.key_windows(t, key, start=from_, end=to, limit=limit + 1)
    if not exists:
        raise _key_missing(t, key)
    next_from = windows.pop()["start"] if len(windows) > limit else None
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "key": key,
            "windows": windows,
            "next_from": next_from,
        }
    )


@router.get(
    f"{BASE}/keys/{{key}}/windows/{{start}}",
    response_model=Window,
    summary="One window of a key, by its start",
)
async def one_window(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName, start: EpochMs
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    exists, windows = await state.store.key_windows(t, key, start=start, end=start, limit=1)
    if not exists:
        raise _key_missing(t, key)
    if not windows:
        raise NotFound(
            "window",
            str(start),
            detail=f"key '{key}' of table '{table}' has no window starting at {start}",
        )
    return JsonResponse(windows[0])


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
    limit: Limit = 100,
) -> JsonResponse:
    _check_range(from_, to)
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    starts = await state.store.table_windows(t, from_, to, limit + 1)
    next_to = starts.pop() if len(starts) > limit else None
    size = t.window_size_ms or 0
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "windows": [{"start": s, "end": s + size} for s in starts],
            "next_to": next_to,
        }
    )


By = Annotated[
    str | None,
    Query(description="Aggregate to rank by; defaults to the table's first aggregate."),
]
N = Annotated[int, Query(ge=1, le=MAX_PAGE, description="How many keys.")]
Order = Annotated[Literal["desc", "asc"], Query(description="desc: largest first.")]


async def _top(
    request: Request,
    pipeline: str,
    table: str,
    start: int | None,
    by: str | None,
    n: int,
    order: str,
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "window")
    by = by or t.aggregates[0].name
    if t.aggregate(by) is None:
        raise InvalidParameter(
            "by",
            f"table '{table}' has no aggregate '{by}' (it has: {', '.join(t.aggregate_names)})",
        )
    found = await state.store.top(t, start, by, n, order)
    if found is None:
        name = "current" if start is None else str(start)
        raise NotFound(
            "window",
            name,
            detail=f"table '{table}' of pipeline '{pipeline}' has "
            + ("no windows yet" if start is None else f"no window starting at {start}"),
        )
    window_start, keys = found
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "start": window_start,
            "end": window_start + (t.window_size_ms or 0),
            "by": by,
            "order": order,
            "keys": keys,
        }
    )


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
    n: N = 10,
    order: Order = "desc",
) -> JsonResponse:
    return await _top(request, pipeline, table, None, by, n, order)


@router.get(
    f"{BASE}/windows/{{start}}/top",
    response_model=TopKeys,
    summary="Top keys of one window by an aggregate",
)
async def window_top(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    start: EpochMs,
    by: By = None,
    n: N = 10,
    order: Order = "desc",
) -> JsonResponse:
    return await _top(request, pipeline, table, start, by, n, order)
