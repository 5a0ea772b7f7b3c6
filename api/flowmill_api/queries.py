"""What the table routes answer, given parsed parameters: the table looked up (404 for an
unknown pipeline or table, or a table of the other kind), checks across parameters and
against the table (422), 404s for a missing key or window, and each response body.

Both the FastAPI routes and the fast path call these, so the two differ only in how they
read a request and send the answer. Redis errors propagate; both paths map them to 503.

Every table response carries the table's `state` when the table is not exact (the
workers' status hash, flowmill.serving.status_key: a rebuild from Kafka in progress, or
offsets Kafka no longer held), and both paths send STATE_HEADER from it.
"""

from __future__ import annotations

from typing import Any

from flowmill import serving
from flowmill_api.catalog import Table
from flowmill_api.errors import InvalidParameter, NotFound
from flowmill_api.state import AppState
from flowmill_api.store import is_final, want_of

Body = dict[str, Any]
TableStatus = serving.TableStatus
STATE_HEADER = "X-Flowmill-Table-State"
"""The response header naming the table's TableStatus, on every table response."""


def table_state(status: dict[str, str]) -> Body | None:
    """A table response's `state` from the table's status hash; None when it is exact
    (serving.table_state: the one reading of that hash, the operator's too)."""
    return serving.table_state(status)


def status_of(state: Body | None) -> TableStatus:
    """`incomplete` outranks `rebuilding`: it stays after the rebuild has caught up."""
    return serving.table_status(state)


def state_header(body: Body) -> str:
    """STATE_HEADER's value for a table response."""
    return status_of(body.get("state"))


async def _stated(state: AppState, t: Table, body: Body) -> Body:
    """The body with the table's `state` when the table is not exact."""
    found = table_state(await state.store.status(t))
    if found is not None:
        body["state"] = found
    return body


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
    t = _window_table(state, pipeline, table)
    total, keys = await state.store.keys(t, offset, limit)
    return await _stated(state, t, _page(pipeline, table, total, offset, limit, keys=keys))


def _window_table(state: AppState, pipeline: str, table: str) -> Table:
    return state.catalog.table(pipeline, table, "window")


def _shared_windows(t: Table) -> None:
    """Sessions are per key: a session table has no windows shared by its keys."""
    if t.is_session:
        raise NotFound(
            "window",
            t.name,
            detail=f"table '{t.name}' of pipeline '{t.pipeline}' holds session windows, which "
            "its keys do not share: see …/sessions/recent and …/sessions/top",
        )


def _session_table(state: AppState, pipeline: str, table: str) -> Table:
    t = _window_table(state, pipeline, table)
    if not t.is_session:
        raise NotFound(
            "table",
            table,
            pipeline=pipeline,
            detail=f"table '{table}' of pipeline '{pipeline}' holds {t.window_type} windows, "
            "not sessions",
        )
    return t


async def current_window(
    state: AppState, pipeline: str, table: str, key: str, *, final: bool | None = None
) -> Body:
    """The key's newest window (with `final`: its newest final, or open, one)."""
    t = _window_table(state, pipeline, table)
    exists, windows = await state.store.key_windows(t, key, last=1, want=want_of(final))
    if not windows:
        if not exists or final is None:
            raise _key_missing(t, key)
        raise NotFound(
            "window",
            "current",
            detail=f"key '{key}' of table '{table}' has no "
            + ("final" if final else "open")
            + " window",
        )
    return await _stated(state, t, windows[-1])


def current_window_stamp(
    state: AppState, pipeline: str, table: str, key: str
) -> tuple[object, object] | None:
    """What current_window's answer is made of while nothing is read from Redis for it:
    the kept windows and the kept status, as objects that stay the same exactly as long
    as they do; None when an answer now would read Redis (or the table is unknown)."""
    t = state.catalog.tables.get(pipeline, {}).get(table)
    if t is None or t.kind != "window":
        return None
    windows = state.store.key_windows_kept(t, key, last=1)
    status = state.store.status_kept(t)
    return None if windows is None or status is None else (windows, status)


async def latest_windows(
    state: AppState, pipeline: str, table: str, key: str, n: int, *, final: bool | None = None
) -> Body:
    t = _window_table(state, pipeline, table)
    exists, windows = await state.store.key_windows(t, key, last=n, want=want_of(final))
    if not exists:
        raise _key_missing(t, key)
    body = {"pipeline": pipeline, "table": table, "key": key, "windows": windows}
    return await _stated(state, t, body)


async def window_range(
    state: AppState,
    pipeline: str,
    table: str,
    key: str,
    from_: int | None,
    to: int | None,
    limit: int,
    *,
    final: bool | None = None,
) -> Body:
    _check_range(from_, to)
    t = _window_table(state, pipeline, table)
    # One more than asked says whether there is a next page, and where it starts.
    exists, windows = await state.store.key_windows(
        t, key, start=from_, end=to, limit=limit + 1, want=want_of(final)
    )
    if not exists:
        raise _key_missing(t, key)
    next_from = windows.pop()["start"] if len(windows) > limit else None
    body = {
        "pipeline": pipeline,
        "table": table,
        "key": key,
        "windows": windows,
        "next_from": next_from,
    }
    return await _stated(state, t, body)


async def one_window(state: AppState, pipeline: str, table: str, key: str, start: int) -> Body:
    t = _window_table(state, pipeline, table)
    exists, windows = await state.store.key_windows(t, key, start=start, end=start, limit=1)
    if not exists:
        raise _key_missing(t, key)
    if not windows:
        raise NotFound(
            "window",
            str(start),
            detail=f"key '{key}' of table '{table}' has no window starting at {start}",
        )
    return await _stated(state, t, windows[0])


async def table_windows(
    state: AppState,
    pipeline: str,
    table: str,
    from_: int | None,
    to: int | None,
    limit: int,
    *,
    final: bool | None = None,
) -> Body:
    _check_range(from_, to)
    t = _window_table(state, pipeline, table)
    _shared_windows(t)
    size = t.window_size_ms or 0
    watermark = await state.store.watermark(t)
    if final is not None:
        # Every window of the table has the same size: final ones start at or before this.
        last_final = None if watermark is None else watermark - size - (t.allowed_lateness_ms or 0)
        if final:
            if last_final is None:
                return await _stated(
                    state, t, _window_list(pipeline, table, watermark, [], None, t)
                )
            to = last_final if to is None else min(to, last_final)
        elif last_final is not None:
            from_ = last_final + 1 if from_ is None else max(from_, last_final + 1)
        if from_ is not None and to is not None and from_ > to:
            return await _stated(state, t, _window_list(pipeline, table, watermark, [], None, t))
    starts = await state.store.table_windows(t, from_, to, limit + 1)
    next_to = starts.pop() if len(starts) > limit else None
    return await _stated(state, t, _window_list(pipeline, table, watermark, starts, next_to, t))


def _window_list(
    pipeline: str,
    table: str,
    watermark: int | None,
    starts: list[int],
    next_to: int | None,
    t: Table,
) -> Body:
    size = t.window_size_ms or 0
    return {
        "pipeline": pipeline,
        "table": table,
        "watermark": watermark,
        "windows": [
            {"start": s, "end": s + size, "final": is_final(t, s + size, watermark)} for s in starts
        ],
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
    *,
    final: bool | None = None,
) -> Body:
    """The top `n` keys of the window starting at `start` (None: the newest, or the newest
    final one with `final`) by the aggregate `by` (None or empty: the table's first)."""
    t = _window_table(state, pipeline, table)
    _shared_windows(t)
    by = _aggregate(t, by)
    found = await state.store.top(t, start, by, n, order, want_of(final))
    if found is None:
        which = "" if final is None else ("final " if final else "open ")
        raise NotFound(
            "window",
            "current" if start is None else str(start),
            detail=f"table '{table}' of pipeline '{pipeline}' has "
            + (
                f"no {which}windows yet"
                if start is None
                else f"no {which}window starting at {start}"
            ),
        )
    window_start, watermark, keys = found
    end = window_start + (t.window_size_ms or 0)
    body = {
        "pipeline": pipeline,
        "table": table,
        "start": window_start,
        "end": end,
        "by": by,
        "order": order,
        "final": is_final(t, end, watermark),
        "watermark": watermark,
        "keys": keys,
    }
    return await _stated(state, t, body)


def top_keys_stamp(
    state: AppState,
    pipeline: str,
    table: str,
    start: int | None,
    by: str | None,
    n: int,
    order: str,
) -> tuple[object, object] | None:
    """What top_keys' answer (without `final`) is made of while nothing is read from
    Redis for it, as current_window_stamp says; None when an answer now would read Redis,
    or would be an error."""
    t = state.catalog.tables.get(pipeline, {}).get(table)
    if t is None or t.kind != "window" or t.is_session:
        return None
    by = by or t.aggregates[0].name
    if t.aggregate(by) is None:
        return None
    top = state.store.top_kept(t, start, by, n, order)
    status = state.store.status_kept(t)
    return None if top is None or status is None else (top, status)


def _aggregate(t: Table, by: str | None) -> str:
    by = by or t.aggregates[0].name
    if t.aggregate(by) is None:
        raise InvalidParameter(
            "by",
            f"table '{t.name}' has no aggregate '{by}' (it has: {', '.join(t.aggregate_names)})",
        )
    return by


# -- session tables -----------------------------------------------------------------------


async def recent_sessions(
    state: AppState, pipeline: str, table: str, n: int, *, final: bool | None = None
) -> Body:
    """The table's most recently ended sessions, of any key."""
    t = _session_table(state, pipeline, table)
    watermark, sessions = await state.store.sessions(t, "recent", n, want_of(final))
    body = {"pipeline": pipeline, "table": table, "watermark": watermark, "sessions": sessions}
    return await _stated(state, t, body)


async def top_sessions(
    state: AppState,
    pipeline: str,
    table: str,
    by: str | None,
    n: int,
    order: str,
    since: int | None,
    *,
    final: bool | None = None,
) -> Body:
    """The top `n` sessions of any key by an aggregate, among those ending at or after
    `since` (the most recently ended SESSION_SCAN at most)."""
    t = _session_table(state, pipeline, table)
    by = _aggregate(t, by)
    watermark, sessions = await state.store.sessions(t, order, n, want_of(final), since, by)
    ranked = [{"rank": i, "score": s["values"][by], **s} for i, s in enumerate(sessions, 1)]
    body = {
        "pipeline": pipeline,
        "table": table,
        "by": by,
        "order": order,
        "watermark": watermark,
        "sessions": ranked,
    }
    return await _stated(state, t, body)


# -- latest-state tables ------------------------------------------------------------------


async def list_entries(state: AppState, pipeline: str, table: str, offset: int, limit: int) -> Body:
    t = state.catalog.table(pipeline, table, "latest")
    total, entries = await state.store.entries(t, offset, limit)
    return await _stated(state, t, _page(pipeline, table, total, offset, limit, entries=entries))


async def entry(state: AppState, pipeline: str, table: str, key: str) -> Body:
    t = state.catalog.table(pipeline, table, "latest")
    found = await state.store.entry(t, key)
    if found is None:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return await _stated(state, t, found)


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
    body = {
        "pipeline": pipeline,
        "table": table,
        "box": {"min_lat": min_lat, "min_lon": min_lon, "max_lat": max_lat, "max_lon": max_lon},
        "matched": matched,
        "truncated": matched > len(entries),
        "entries": entries,
    }
    return await _stated(state, t, body)
