"""Response models: the shapes the OpenAPI document promises.

Times are epoch milliseconds, as the workers store them; window values are typed by their
aggregate (count and distinct are integers, the others floats, null when a window saw no
value for the field).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Value = int | float | None


class ParameterError(BaseModel):
    name: str = Field(description="The parameter, e.g. `n` or `min_lat`.")
    in_: str = Field(alias="in", description="Where it was: query, path, header.")
    message: str


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(
        description="not_found, invalid_parameter, redis_unavailable, unauthorized or rate_limited."
    )
    detail: str = Field(description="What went wrong, for a person.")
    resource: str | None = Field(
        default=None, description="404: the missing kind: pipeline, table, key or window."
    )
    name: str | None = Field(default=None, description="404: the missing name.")
    parameters: list[ParameterError] | None = Field(
        default=None, description="422: each bad parameter."
    )


class AggregateModel(BaseModel):
    name: str
    op: str = Field(description="count, sum, avg, min, max or distinct.")
    field: str | None = None


class WindowShape(BaseModel):
    type: str = Field(description="tumbling or hopping.")
    size_ms: int
    advance_ms: int
    allowed_lateness_ms: int
    retain: int = Field(description="Windows kept per key.")
    event_time_field: str | None = None


class GeoModel(BaseModel):
    lat: str = Field(description="Event field holding the latitude.")
    lon: str = Field(description="Event field holding the longitude.")


class TableModel(BaseModel):
    pipeline: str
    name: str
    step: str = Field(description="The step that writes the table.")
    kind: Literal["window", "latest"]
    key_field: str
    window: WindowShape | None = None
    aggregates: list[AggregateModel] = []
    latest_fields: list[str] | None = None
    geo: GeoModel | None = None
    ttl_seconds: float | None = None
    live: bool = Field(description="Whether writes are published for live updates.")
    links: dict[str, str] = Field(description="URL templates of the table's endpoints.")


class PipelineModel(BaseModel):
    name: str
    namespace: str | None = None
    tables: list[TableModel]


class PipelineList(BaseModel):
    pipelines: list[PipelineModel]


class Window(BaseModel):
    """One key's window."""

    key: str
    start: int
    end: int
    values: dict[str, Value]


class WindowList(BaseModel):
    pipeline: str
    table: str
    key: str
    windows: list[Window] = Field(description="Oldest first.")
    next_from: int | None = Field(
        default=None, description="Range queries cut at `limit`: pass as `from` for more."
    )


class WindowRef(BaseModel):
    start: int
    end: int


class TableWindowList(BaseModel):
    pipeline: str
    table: str
    windows: list[WindowRef] = Field(description="Newest first.")
    next_to: int | None = Field(
        default=None, description="Cut at `limit`: pass as `to` for older windows."
    )


class KeyItem(BaseModel):
    key: str
    latest_start: int = Field(description="Start of the key's newest window.")


class KeyPage(BaseModel):
    pipeline: str
    table: str
    total: int
    offset: int
    limit: int
    keys: list[KeyItem] = Field(description="Most recently active first.")


class TopEntry(BaseModel):
    rank: int = Field(description="1 for the first key.")
    key: str
    score: Value = Field(description="The value of the `by` aggregate.")
    values: dict[str, Value]


class TopKeys(BaseModel):
    pipeline: str
    table: str
    start: int
    end: int
    by: str
    order: Literal["desc", "asc"]
    keys: list[TopEntry]


class Entry(BaseModel):
    """One key of a latest-state table."""

    key: str
    updated: int | None = Field(description="Time of the key's latest event (ms).")
    value: dict[str, Any] = Field(description="The latest event (or its kept fields).")


class EntryPage(BaseModel):
    pipeline: str
    table: str
    total: int
    offset: int
    limit: int
    entries: list[Entry] = Field(description="Most recently updated first.")


class GeoEntry(Entry):
    lat: float
    lon: float


class BoundingBox(BaseModel):
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float


class GeoResult(BaseModel):
    pipeline: str
    table: str
    box: BoundingBox
    matched: int = Field(description="Keys inside the box (may exceed `limit`).")
    truncated: bool
    entries: list[GeoEntry] = Field(description="Nearest to the box's centre first.")


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


class LiveEvent(BaseModel):
    """The data of one SSE `update` event or WebSocket message."""

    id: str = Field(description="Resume position: send as Last-Event-ID or `since`.")
    table: str
    key: str
    window: WindowRef | None = None
    values: dict[str, Any] | None = None
    deleted: bool = False
    replay: bool = Field(
        default=False, description="Re-sent from Redis after a reconnect or a resync."
    )
