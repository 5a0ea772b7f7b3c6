"""Latest-state tables: one key, all keys a page at a time, and the keys inside a
latitude/longitude box (Smart City's vehicle map) when the table has geo fields."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from flowmill_api.errors import InvalidParameter, NotFound
from flowmill_api.models import Entry, EntryPage, GeoResult
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, KeyName, Limit, Offset, PipelineName, TableName
from flowmill_api.state import app_state

router = APIRouter(tags=["latest-state"], responses=ERRORS)

BASE = "/pipelines/{pipeline}/tables/{table}"
Lat = Annotated[float, Query(ge=-90, le=90, description="Degrees.")]
Lon = Annotated[float, Query(ge=-180, le=180, description="Degrees.")]
GEO_PAGE = 10_000


@router.get(
    f"{BASE}/entries",
    response_model=EntryPage,
    summary="All keys of a latest-state table, most recently updated first",
)
async def list_entries(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    offset: Offset = 0,
    limit: Limit = 100,
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "latest")
    total, entries = await state.store.entries(t, offset, limit)
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "total": total,
            "offset": offset,
            "limit": limit,
            "entries": entries,
        }
    )


@router.get(f"{BASE}/entries/{{key}}", response_model=Entry, summary="One key's latest event")
async def get_entry(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName
) -> JsonResponse:
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "latest")
    entry = await state.store.entry(t, key)
    if entry is None:
        raise NotFound("key", key, pipeline=pipeline, table=table)
    return JsonResponse(entry)


@router.get(
    f"{BASE}/within",
    response_model=GeoResult,
    summary="Keys whose position is inside a latitude/longitude box",
)
async def within_box(
    request: Request,
    pipeline: PipelineName,
    table: TableName,
    min_lat: Lat,
    min_lon: Lon,
    max_lat: Lat,
    max_lon: Lon,
    limit: Annotated[int, Query(ge=1, le=GEO_PAGE)] = 1000,
) -> JsonResponse:
    if min_lat > max_lat:
        raise InvalidParameter("min_lat", f"{min_lat} is above max_lat={max_lat}")
    if min_lon > max_lon:
        raise InvalidParameter("min_lon", f"{min_lon} is east of max_lon={max_lon}")
    state = app_state(request)
    t = state.catalog.table(pipeline, table, "latest")
    if t.geo is None:
        raise NotFound(
            "table",
            table,
            detail=f"table '{table}' of pipeline '{pipeline}' has no positions "
            "(its sink.redis.geo is unset)",
        )
    matched, entries = await state.store.within(t, min_lat, min_lon, max_lat, max_lon, limit)
    return JsonResponse(
        {
            "pipeline": pipeline,
            "table": table,
            "box": {"min_lat": min_lat, "min_lon": min_lon, "max_lat": max_lat, "max_lon": max_lon},
            "matched": matched,
            "truncated": matched > len(entries),
            "entries": entries,
        }
    )
