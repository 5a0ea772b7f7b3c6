"""Response models: the shapes the OpenAPI document promises.

Times are epoch milliseconds, as the workers store them; window values are typed by their
aggregate (count and distinct are integers, the others floats, null when a window saw no
value for the field).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Value = int | float | None


class RebuildingPartition(BaseModel):
    topic: str
    partition: int
    until_offset: int = Field(description="The offset the rebuild from Kafka must reach.")


class IncompletePartition(BaseModel):
    topic: str
    partition: int
    missing_before_offset: int = Field(
        description="Kafka no longer held the offsets before this one when the table was "
        "rebuilt: what they held is missing from it for good."
    )
    detected_ms: int | None = Field(default=None, description="When the step found out.")


class TableState(BaseModel):
    """Why a table's answers are not exact (absent from the response when they are)."""

    rebuilding: list[RebuildingPartition] = Field(
        description="Partitions being replayed from Kafka after Redis lost their state."
    )
    incomplete: list[IncompletePartition]


class Stated(BaseModel):
    """A table response: `state` is present only while the table is not exact (the
    X-Flowmill-Table-State header says exact, rebuilding or incomplete on every one)."""

    state: TableState | None = None


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
    type: str = Field(description="tumbling, hopping or session.")
    size_ms: int | None = Field(description="Tumbling and hopping windows.")
    advance_ms: int | None
    gap_ms: int | None = Field(default=None, description="Sessions: the gap that ends one.")
    max_duration_ms: int | None = Field(default=None, description="Sessions: maxDuration.")
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
    status: Literal["exact", "rebuilding", "incomplete", "unknown"] = Field(
        description="Whether the table's answers are exact (`unknown`: Redis did not answer)."
    )
    state: TableState | None = Field(
        default=None, description="Why it is not exact, as on the table's own responses."
    )


class PipelineModel(BaseModel):
    name: str
    namespace: str | None = None
    tables: list[TableModel]


class PipelineList(BaseModel):
    pipelines: list[PipelineModel]


class Window(Stated):
    """One key's window (or session)."""

    key: str
    start: int
    end: int = Field(description="Window end; a session's last event + gap.")
    last_event: int | None = Field(
        default=None, description="Sessions: the time of the session's last event."
    )
    final: bool = Field(
        description="The table's watermark passed end + allowedLateness: no event can "
        "change it any more."
    )
    watermark: int | None = Field(
        description="The table's watermark (ms) the answer was read at: the smallest of its "
        "input partitions'; null until every partition has one."
    )
    values: dict[str, Value]
    errors: dict[str, str] | None = Field(
        default=None,
        description="Aggregate -> why it has no value (e.g. a sum beyond the range of a "
        "double); its value is null for good, the other aggregates are exact.",
    )


class SessionList(Stated):
    pipeline: str
    table: str
    watermark: int | None
    sessions: list[Window] = Field(description="Most recently ended first.")


class TopSession(Window):
    rank: int = Field(description="1 for the first session.")
    score: Value = Field(description="The value of the `by` aggregate.")


class TopSessions(Stated):
    pipeline: str
    table: str
    by: str
    order: Literal["desc", "asc"]
    watermark: int | None
    sessions: list[TopSession]


class WindowList(Stated):
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
    last: int | None = Field(default=None, description="Sessions: the last event's time.")
    final: bool | None = None


class TableWindowList(Stated):
    pipeline: str
    table: str
    watermark: int | None = None
    windows: list[WindowRef] = Field(description="Newest first.")
    next_to: int | None = Field(
        default=None, description="Cut at `limit`: pass as `to` for older windows."
    )


class KeyItem(BaseModel):
    key: str
    latest_start: int = Field(description="Start of the key's newest window.")


class KeyPage(Stated):
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
    errors: dict[str, str] | None = Field(
        default=None, description="As a window's: aggregates without a value, and why."
    )


class TopKeys(Stated):
    pipeline: str
    table: str
    start: int
    end: int
    by: str
    order: Literal["desc", "asc"]
    final: bool
    watermark: int | None
    keys: list[TopEntry]


class Entry(Stated):
    """One key of a latest-state table."""

    key: str
    updated: int | None = Field(description="Time of the key's latest event (ms).")
    value: dict[str, Any] = Field(description="The latest event (or its kept fields).")


class EntryPage(Stated):
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


class GeoResult(Stated):
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
    """The data of one SSE `update` or `final` event or WebSocket message."""

    id: str = Field(description="Resume position: send as Last-Event-ID or `since`.")
    table: str
    key: str
    window: WindowRef | None = None
    values: dict[str, Any] | None = None
    deleted: bool = Field(
        default=False, description="Removed (a latest entry; a session merged into another)."
    )
    final: bool | None = Field(
        default=None,
        description="Window tables: whether the window is final. A `final` event is sent "
        "once when a window becomes final.",
    )
    watermark: int | None = None
    replay: bool = Field(
        default=False, description="Re-sent from Redis after a reconnect or a resync."
    )


class DeadLetterInfo(BaseModel):
    """One dead letter, as its headers describe it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(description="When it was dead-lettered.")
    step: str | None = Field(description="The step that dead-lettered it.")
    reason: str
    origin: str | None = Field(description="The consumed record: topic[partition]@offset.")
    event_timestamp_ms: int | None = Field(description="The consumed record's timestamp.")


class HealthNode(BaseModel):
    """One source, topic, step or sink, with what is known about it now (null: unknown)."""

    id: str = Field(description="source/NAME, topic/NAME, step/NAME or sink/STEP/KIND.")
    kind: Literal["source", "topic", "step", "sink"]
    name: str
    detail: str = Field(description="A sink's kind; `dead letters` on a dead-letter topic.")
    column: int = Field(description="Left to right in the drawing.")
    row: int = Field(description="Top to bottom within its column.")
    state: str | None = Field(
        default=None,
        description="starting, ready, done, restarting, exited, stopped or unknown "
        "(sources, steps and their sinks).",
    )
    rate_in: float | None = Field(default=None, description="Events (messages) per second in.")
    rate_out: float | None = None
    events_in: float | None = None
    events_out: float | None = None
    lag: float | None = Field(default=None, description="Consumer lag in messages (steps).")
    dead_letters: float | None = Field(default=None, description="Events dead-lettered.")
    restarts: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    messages: int | None = Field(default=None, description="Messages the topic holds.")
    message: str = Field(default="", description="What the part's /readyz says.")
    reasons: list[DeadLetterInfo] = Field(
        description="The newest dead letters: of a dead-letter topic, or of a step."
    )


class HealthEdge(BaseModel):
    source: str
    target: str
    kind: Literal["data", "deadLetter", "join"]


class PipelineHealth(BaseModel):
    """The Pipeline as a graph of sources, topics, steps and sinks, and how each is doing."""

    pipeline: str
    source: Literal["run", "prometheus", "none"] = Field(
        description="Where the workers' numbers come from: flowmill run's supervisor, "
        "Prometheus, or nowhere (only Kafka's side is shown)."
    )
    detail: str
    kafka: str = Field(description="`ok`, or why the topics could not be read.")
    updated_ms: int
    nodes: list[HealthNode]
    edges: list[HealthEdge]
    api: dict[str, Any] | None = Field(
        description="The API process's own state and restarts (a local run)."
    )
