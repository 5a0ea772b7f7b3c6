"""What the table routes answer, given parsed parameters: the table looked up (404 for an
unknown pipeline or table, or a table of the other kind), checks across parameters and
against the table (422), 404s for a missing key or window, and each response body.

Both the FastAPI routes and the fast path call these, so the two differ only in how they
read a request and send the answer. Redis errors propagate; both paths map them to 503.
"""

from __future__ import annotations

from typing import Any

from flowmill_api.catalog import Table
from flowmill_api.errors import InvalidParameter, NotFound
from flowmill_api.state import AppState

Body = dict[str, Any]


def _key_missing(t: Table, key: str) -> NotFound:
    return NotFound("key", key, pipeline=t.pipeline, table=t.name)


def _check_range(from_: int | None, to: int | None) -> None:
    if from_ is not None and to is not None and from_ > to:
        raise InvalidParameter("from", f"{from_} is after to={to}")


def _page(pipeline: str, table: str, total: int, offset: int, limit: int, **items: Any) -> Body:
    """The envelope of every paged listing: where the page is, then its items by name."""
    return {
        "pipeline": pipeline,
        "table": table,
        "total": total,
        "offset": offset,
        "limit": limit,
        **items,
    }


# -- window tables ------------------------------------------------------------------------


async def list_keys(state: AppState, pipeline: str, table: str, offset: int, limit: int) -> Body:
    t = state.catalog.table(pipeline, table, "window")
    total, keys = await state.store.keys(t, offset, limit)
    return _page(pipeline, table, total, offset, limit, keys=keys)


async def current_window(state: AppState, pipeline: str, table: str, key: str) -> Body:
    t = state.catalog.table(pipeline, table, "window")
    _, windows = await state.store.key_windows(t, key, last=1)
    if not windows:
        raise _key_missing(t, key)
    return windows[-1]


async def latest_windows(state: AppState, pipeline: str, table: str, key: str, n: int) -> Body:
    t = state.catalog.table(pipeline, table, "window")
    exists, windows = await state.store.key_windows(t, key, last=n)
    if not exists:
        raise _key_missing(t, key)
    return {"pipeline": pipeline, "table": table, "key": key, "windows": windows}


async def window_range(
    state: AppState,
    pipeline: str,
    table: str,
    key: str,
    from_: int | None,
    to: int | None,
    limit: int,
) -> Body:
    _check_range(from_, to)
    t = state.catalog.table(pipeline, table, "window")
    # One more than asked says whether there is a next page, and where it starts.
    exists, windows = await state.store.key_windows(t, key, start=from_, end=to, limit=limit + 1)
    if not exists:
        raise _key_missing(t, key)
    next_from = windows.pop()["start"] if len(windows) > limit else None
    return {
        "pipeline": pipeline,
        "table": table,
        "key": key,
        "windows": windows,
        "next_from": next_from,
    }


async def one_window(state: AppState, pipeline: str, table: str, key: str, start: int) -> Body:
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
    return windows[0]


async def table_windows(
    state: AppState, pipeline: str, table: str, from_: int | None, to: int | None, limit: int
) -> Body:
    _check_range(from_, to)
    t = state.catalog.table(pipeline, table, "window")
    starts = await state.store.table_windows(t, from_, to, limit + 1)
    next_to = starts.pop() if len(starts) > limit else None
    size = t.window_size_ms or 0
    return {
        "pipeline": pipeline,
        "table": table,
        "windows": [{"start": s, "end": s + size} for s in starts],
        "next_to": next_to,
    }


async def top_keys(
    state: AppState,
    pipeline: str,
    table: str,
    start: int | None,
    by: str | None,
    n: int,
    order: str,
) -> Body:
    """The top `n` keys of the window starting at `start` (None: the newest) by the
    aggregate `by` (None or empty: the table's first)."""
    t = state.catalog.table(pipeline, table, "window")
    by = by or t.aggregates[0].name
    if t.aggregate(by) is None:
        raise InvalidParameter(
            "by",
            f"table '{table}' has no aggregate '{by}' (it has: {', '.join(t.aggregate_names)})",
        )
    found = await state.store.top(t, start, by, n, order)
    if found is None:
        raise NotFound(
            "window",
            "current" if start is None else str(start),
            detail=f"table '{table}' of pipeline '{pipeline}' has "
            + ("no windows yet" if start is None else f"no window starting at {start}"),
        )
    window_start, keys = found
    return {
        "pipeline": pipeline,
        "table": table,
        "start": window_start,
        "end": window_start + (t.window_size_ms or 0),
        "by": by,
        "order": order,
        "keys": keys,
    }


# -- latest-state tables ------------------------------------------------------------------


async def list_entries(state: AppState, pipeline: str, table: str, offset: int, limit: int) -> Body:
    t = state.catalog.table(pipeline, table, "latest")
    total, entries = await state.store.entries(t, offset, limit)
    return _page(pipeline, table, total, offset, limit, entries=entries)


async def entry(state: AppState, pipeline: str, table: str, key: str) -> Body:
    t = state.catalog.table(pipeline, table, "latest")
    found = await state.store.entry(t, key)
    if found is None:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return found


async def within_box(
    state: AppState,
    pipeline: str,
    table: str,
    box: tuple[float, float, float, float],
    limit: int,
) -> Body:
    """Entries positioned inside `box` (min_lat, min_lon, max_lat, max_lon)."""
    min_lat, min_lon, max_lat, max_lon = box
    if min_lat > max_lat:
        raise InvalidParameter("min_lat", f"{min_lat} is above max_lat={max_lat}")
    if min_lon > max_lon:
        raise InvalidParameter("min_lon", f"{min_lon} is east of max_lon={max_lon}")
    t = state.catalog.table(pipeline, table, "latest")
    if t.geo is None:
        raise NotFound(
            "table",
            table,
            detail=f"table '{table}' of pipeline '{pipeline}' has no positions "
            "(its sink.redis.geo is unset)",
        )
    matched, entries = await state.store.within(t, min_lat, min_lon, max_lat, max_lon, limit)
    return {
        "pipeline": pipeline,
        "table": table,
        "box": {"min_lat": min_lat, "min_lon": min_lon, "max_lat": max_lat, "max_lon": max_lon},
        "matched": matched,
        "truncated": matched > len(entries),
        "entries": entries,
    }
