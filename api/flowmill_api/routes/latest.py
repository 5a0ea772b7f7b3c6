"""Latest-state tables: one key, all keys a page at a time, and the keys inside a
latitude/longitude box (Smart City's vehicle map) when the table has geo fields."""

from __future__ import annotations

from fastapi import APIRouter, Request

from flowmill_api import queries
from flowmill_api.models import Entry, EntryPage, GeoResult
from flowmill_api.params import DEFAULT_GEO_LIMIT, DEFAULT_LIMIT, GeoLimit, Lat, Limit, Lon, Offset
from flowmill_api.responses import JsonResponse
from flowmill_api.routes.common import ERRORS, KeyName, PipelineName, TableName
from flowmill_api.state import app_state

router = APIRouter(tags=["latest-state"], responses=ERRORS)

BASE = "/pipelines/{pipeline}/tables/{table}"


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
    limit: Limit = DEFAULT_LIMIT,
) -> JsonResponse:
    body = await queries.list_entries(app_state(request), pipeline, table, offset, limit)
    return JsonResponse(body)


@router.get(f"{BASE}/entries/{{key}}", response_model=Entry, summary="One key's latest event")
async def get_entry(
    request: Request, pipeline: PipelineName, table: TableName, key: KeyName
) -> JsonResponse:
    return JsonResponse(await queries.entry(app_state(request), pipeline, table, key))


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
    limit: GeoLimit = DEFAULT_GEO_LIMIT,
) -> JsonResponse:
    box = (min_lat, min_lon, max_lat, max_lon)
    body = await queries.within_box(app_state(request), pipeline, table, box, limit)
    return JsonResponse(body)
