"""Latest-state tables: one key, all keys a page at a time, and the keys inside a
latitude/longitude box (Smart City's vehicle map) when the table has geo fields."""

from __future__ import annotations

from fastapi import APIRouter

from flowmill_api import queries
from flowmill_api.models import Entry, EntryPage, GeoResult
from flowmill_api.params import DEFAULT_GEO_LIMIT, GeoLimit, Lat, Lon
from flowmill_api.routes.common import ERRORS
from flowmill_api.routes.table_routes import KEY, LIMIT, OFFSET, param, table_route
from flowmill_api.state import AppState

router = APIRouter(tags=["latest-state"], responses=ERRORS)


async def _within_box(
    state: AppState,
    pipeline: str,
    table: str,
    *,
    min_lat: float,
    min_lon: float,
    max_lat: float,
    max_lon: float,
    limit: int,
) -> queries.Body:
    """queries.within_box with the box as the route's four parameters."""
    box = (min_lat, min_lon, max_lat, max_lon)
    return await queries.within_box(state, pipeline, table, box, limit)


table_route(
    router,
    "/entries",
    "list_entries",
    EntryPage,
    "All keys of a latest-state table, most recently updated first",
    queries.list_entries,
    OFFSET,
    LIMIT,
)
table_route(
    router,
    "/entries/{key}",
    "get_entry",
    Entry,
    "One key's latest event",
    queries.entry,
    KEY,
)
table_route(
    router,
    "/within",
    "within_box",
    GeoResult,
    "Keys whose position is inside a latitude/longitude box",
    _within_box,
    param("min_lat", Lat),
    param("min_lon", Lon),
    param("max_lat", Lat),
    param("max_lon", Lon),
    param("limit", GeoLimit, DEFAULT_GEO_LIMIT),
)
