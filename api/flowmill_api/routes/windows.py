"""Window tables: a key's current window, its latest N, a time range, one window, the
table's windows, its keys, and the top keys of a window by an aggregate; session tables:
the same per key, and the table's recent and top sessions. `final=` filters on whether
the watermark has passed a window's end + allowedLateness.

StreamPulse's `/metrics/region/{id}?window=1m` is
`/pipelines/{p}/tables/{t}/keys/{id}/windows/current` here (docs/api.md maps the seeds).
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter

from flowmill_api import queries
from flowmill_api.models import (
    KeyPage,
    SessionList,
    TableWindowList,
    TopKeys,
    TopSessions,
    Window,
    WindowList,
)
from flowmill_api.params import (
    DEFAULT_COUNT,
    DEFAULT_ORDER,
    By,
    From,
    KeyCount,
    Order,
    Since,
    To,
    WindowCount,
    WindowStart,
)
from flowmill_api.routes.common import ERRORS
from flowmill_api.routes.table_routes import FINAL, KEY, LIMIT, OFFSET, param, table_route

router = APIRouter(tags=["windows"], responses=ERRORS)

START = param("start", WindowStart)
WINDOWS = param("n", WindowCount, DEFAULT_COUNT)
RANGE = (param("from_", From, None), param("to", To, None), LIMIT, FINAL)
BY = param("by", By, None)
ORDER = param("order", Order, DEFAULT_ORDER)
RANK = (BY, param("n", KeyCount, DEFAULT_COUNT), ORDER)
"""The aggregate to rank a window's keys by, how many and which way."""

# In this order: FastAPI tries the routes in turn, so the literal segments (`current`,
# `latest`) must come before `{start}` would take them.
table_route(
    router,
    "/keys",
    "list_keys",
    KeyPage,
    "The table's keys, most recently active first",
    queries.list_keys,
    OFFSET,
    LIMIT,
)
table_route(
    router,
    "/keys/{key}/windows/current",
    "current_window",
    Window,
    "A key's current (newest) window; a session table's: its newest session "
    "(`final: false` while it is open)",
    queries.current_window,
    KEY,
    FINAL,
)
table_route(
    router,
    "/keys/{key}/windows/latest",
    "latest_windows",
    WindowList,
    "A key's latest N windows, oldest first",
    queries.latest_windows,
    KEY,
    WINDOWS,
    FINAL,
)
table_route(
    router,
    "/keys/{key}/windows",
    "window_range",
    WindowList,
    "A key's windows starting in a time range, oldest first",
    queries.window_range,
    KEY,
    *RANGE,
)
table_route(
    router,
    "/keys/{key}/windows/{start}",
    "one_window",
    Window,
    "One window of a key, by its start",
    queries.one_window,
    KEY,
    START,
)
table_route(
    router,
    "/windows",
    "table_windows",
    TableWindowList,
    "The table's windows (any key), newest first",
    queries.table_windows,
    *RANGE,
)
table_route(
    router,
    "/windows/current/top",
    "current_top",
    TopKeys,
    "Top keys of the table's newest window by an aggregate",
    partial(queries.top_keys, start=None),
    *RANK,
    FINAL,
)
table_route(
    router,
    "/windows/{start}/top",
    "window_top",
    TopKeys,
    "Top keys of one window by an aggregate",
    queries.top_keys,
    START,
    *RANK,
    FINAL,
)
table_route(
    router,
    "/sessions/recent",
    "recent_sessions",
    SessionList,
    "A session table's most recently ended sessions, any key",
    queries.recent_sessions,
    WINDOWS,
    FINAL,
)
table_route(
    router,
    "/sessions/top",
    "top_sessions",
    TopSessions,
    "Top sessions of any key by an aggregate (`final=true`: recently closed ones)",
    queries.top_sessions,
    BY,
    WINDOWS,
    ORDER,
    param("since", Since, None),
    FINAL,
)
