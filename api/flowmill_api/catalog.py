"""What the API serves, read once from the Pipeline manifests: no code per pipeline.

A table's shape (its key field, window size, aggregates and their operations, geo fields)
comes from the step that writes it, so the API can type values, validate an `by=`
aggregate, and answer 404s that name the missing pipeline or table without asking Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from flowmill import serving
from flowmill.spec import Pipeline, StepSpec, duration_seconds
from flowmill_api.errors import NotFound

TableKind = Literal["window", "latest"]
INTEGER_OPS = frozenset({"count", "distinct"})


@dataclass(frozen=True, slots=True)
class AggregateInfo:
    """One aggregate of a window table."""

    name: str
    op: str
    field: str | None


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """The event fields holding a latest-state table's positions."""

    lat: str
    lon: str


@dataclass(frozen=True, slots=True)
class Table:
    """One serving table and the Redis keys it lives under."""

    pipeline: str
    name: str
    step: str
    kind: TableKind
    key_field: str
    ttl_seconds: float | None
    publish: bool
    window_type: str | None = None
    window_size_ms: int | None = None
    window_advance_ms: int | None = None
    allowed_lateness_ms: int | None = None
    retain: int | None = None
    event_time_field: str | None = None
    aggregates: tuple[AggregateInfo, ...] = ()
    latest_fields: tuple[str, ...] | None = None
    geo: GeoInfo | None = None
    session_gap_ms: int | None = None
    session_max_ms: int | None = None
    watermark_fields: tuple[str, ...] = ()
    """Checkpoint fields whose minimum is the table's watermark (serving.watermark_fields)."""

    @property
    def is_session(self) -> bool:
        return self.window_type == "session"

    @property
    def checkpoint(self) -> str:
        return serving.checkpoint_key(self.pipeline, self.step)

    @property
    def prefix(self) -> str:
        return serving.table_prefix(self.pipeline, self.name)

    @property
    def channel(self) -> str:
        return serving.channel(self.pipeline, self.name)

    @property
    def aggregate_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aggregates)

    def aggregate(self, name: str) -> AggregateInfo | None:
        return next((a for a in self.aggregates if a.name == name), None)


def _ms(duration: str | None) -> int | None:
    return None if duration is None else int(duration_seconds(duration) * 1000)


def table_of(pipeline: Pipeline, step: StepSpec) -> Table | None:
    """The table a step writes, or None for a Redis sink that holds neither windows nor
    latest state (the workers write nothing there)."""
    assert step.sink is not None and step.sink.redis is not None and step.key_by is not None
    sink = step.sink.redis
    common = {
        "pipeline": pipeline.name,
        "name": sink.table,
        "step": step.name,
        "key_field": step.key_by,
        "ttl_seconds": duration_seconds(sink.ttl) if sink.ttl else None,
        "publish": sink.publish,
    }
    if step.window is not None and step.aggregate is not None:
        w = step.window
        size = _ms(w.size)
        session = w.session
        return Table(
            kind="window",
            window_type=w.type,
            window_size_ms=size,
            window_advance_ms=_ms(w.advance) if w.type == "hopping" else size,
            session_gap_ms=_ms(session.gap) if session else None,
            session_max_ms=_ms(session.max_duration) if session else None,
            watermark_fields=tuple(serving.watermark_fields(pipeline, step)),
            allowed_lateness_ms=_ms(w.allowed_lateness),
            retain=w.retain,
            event_time_field=w.event_time,
            aggregates=tuple(
                AggregateInfo(name, a.op, a.field) for name, a in step.aggregate.items()
            ),
            **common,  # type: ignore[arg-type]
        )
    if step.latest is not None:
        geo = sink.geo
        return Table(
            kind="latest",
            latest_fields=tuple(step.latest.fields) if step.latest.fields else None,
            geo=GeoInfo(geo.lat, geo.lon) if geo else None,
            **common,  # type: ignore[arg-type]
        )
    return None


class Catalog:
    """Pipelines and their tables, looked up by name; unknown names raise NotFound."""

    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self.pipelines: dict[str, Pipeline] = {}
        self.tables: dict[str, dict[str, Table]] = {}
        for pipeline in pipelines:
            if pipeline.name in self.pipelines:
                raise ValueError(f"Pipeline {pipeline.name} is given twice")
            self.pipelines[pipeline.name] = pipeline
            tables: dict[str, Table] = {}
            for step, _ in pipeline.tables():
                if step.key_by is None:
                    continue
                table = table_of(pipeline, step)
                if table is not None:
                    tables[table.name] = table
            self.tables[pipeline.name] = tables

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise NotFound("pipeline", name) from None

    def table(self, pipeline: str, name: str, kind: TableKind | None = None) -> Table:
        """The table, checked to be of `kind` when given (a window route on a
        latest-state table is a 404 that says which kind the table is)."""
        self.pipeline(pipeline)
        table = self.tables[pipeline].get(name)
        if table is None:
            raise NotFound("table", name, pipeline=pipeline)
        if kind is not None and table.kind != kind:
            raise NotFound(
                "table",
                name,
                pipeline=pipeline,
                detail=f"table '{name}' of pipeline '{pipeline}' is a {table.kind} table, "
                f"not a {kind} table",
            )
        return table
