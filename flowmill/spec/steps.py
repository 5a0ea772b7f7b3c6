"""What a step does to the events of its input topic, in the order the fields are listed:
validate, filter, map, lookup, function, correlate, keyBy, window + aggregate or latest,
sink; or,
instead of all of them, a user's Faust agent (flowmill/spec/faust_step.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from flowmill.spec.common import (
    Duration,
    Expression,
    FieldPath,
    GraceDuration,
    Name,
    SpecModel,
    TopicName,
    WindowDuration,
    cel_rule,
    duration_seconds,
)
from flowmill.spec.faust_step import FaustSpec
from flowmill.spec.pod_template import PodTemplate, Resources
from flowmill.spec.sinks import SinkSpec

DEFAULT_SCALE_DOWN = "5m"
"""Scale-down stabilization of a step's autoscaler when autoscaling sets none."""
MAX_WINDOWS_PER_EVENT = 1000
"""Most hopping windows one event may fall into (size / advance)."""
AGGREGATE_OPS = ("count", "sum", "avg", "min", "max", "distinct")
BUILT_IN_FIELDS = (
    "validate",
    "filter",
    "map",
    "lookup",
    "function",
    "correlate",
    "keyBy",
    "window",
    "aggregate",
    "latest",
    "sink",
    "deadLetter",
)
"""The built-in processing of a step (manifest names); a Faust step has none of them."""
WINDOW_RECORD_FIELDS = ("start", "end", "last_event", "final", "watermark")
"""The fields of a window record on a kafka sink (besides the keyBy field and the
aggregates), so no aggregate may be named like one."""

# Aggregates take a short form (`count`, `{sum: fare}`) that a structural schema cannot
# type, and CEL cannot inspect values of a free-form map (they are untyped there), so the
# CRD keeps the map free-form and the operator's validation checks each entry, setting
# Ready=False with the field named (as `flowmill validate` does).
_AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
}


class ValidateStep(SpecModel):
    """Check each event against a JSON Schema; failures go to a dead-letter topic."""

    schema_: dict[str, Any] = Field(alias="schema")
    """A JSON Schema (draft 2020-12) each event must satisfy."""
    dead_letter: TopicName | None = None
    """Topic receiving failing events with the reason in headers; must be declared in
    spec.topics. Unset uses the step's deadLetter."""

    @field_validator("schema_")
    @classmethod
    def _is_json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from flowmill.spec.json_schema import check_event_schema

        check_event_schema(value)
        return value


class SessionSpec(SpecModel):
    """A key's events grouped into sessions of activity: a session ends after `gap`
    without an event of its key (in event time)."""

    gap: WindowDuration
    """Inactivity that ends a session (e.g. 30m)."""
    active_for: FieldPath | None = None
    """Field with how long each event keeps its session active, in seconds (e.g. a
    view's duration): the gap then counts from the end of that activity, not from the
    event's time. Unset: events are instants."""
    max_duration: WindowDuration | None = None
    """Cut sessions at multiples of this duration since the epoch (UTC), so no session
    spans more than it (e.g. 1d cuts at midnight UTC). The cut points do not depend on
    the order events arrive in, so results are the same however late events come."""

    @field_validator("gap", "max_duration")
    @classmethod
    def _positive(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and duration_seconds(value) <= 0:
            name = "maxDuration" if info.field_name == "max_duration" else info.field_name
            raise ValueError(f"{name} must be positive")
        return value


class WindowSpec(SpecModel):
    """Group a key's events by time."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!has(self.type) || self.type != 'hopping' || has(self.advance)",
                    "a hopping window needs advance",
                    ".advance",
                ),
                cel_rule(
                    "has(self.size) || has(self.session)",
                    "a window needs size (tumbling, hopping) or session",
                    ".size",
                ),
                cel_rule(
                    "!(has(self.size) && has(self.session))",
                    "set size (tumbling, hopping) or session, not both",
                    ".session",
                ),
                cel_rule(
                    "!has(self.type) || (self.type == 'session') == has(self.session)",
                    "type session goes with session, and session with type session",
                    ".session",
                ),
            ]
        }
    }

    type: Literal["tumbling", "hopping", "session"] = "tumbling"
    """tumbling: back-to-back windows of `size`; hopping: windows of `size` starting
    every `advance`, so they overlap; session: per key, activity separated by
    `session.gap` (implied by `session`)."""
    size: WindowDuration | None = None
    """Length of a window (tumbling and hopping)."""
    advance: WindowDuration | None = None
    """Hopping windows only: time between window starts (must divide size)."""
    session: SessionSpec | None = None
    """Session windows: the gap that ends a session and an optional maxDuration."""
    event_time: FieldPath | None = None
    """Field with the event's time (ISO 8601 or epoch seconds/ms). Unset windows by
    processing time."""
    allowed_lateness: GraceDuration = "0s"
    """How long after a window ends its late events are still counted; later ones are
    counted as late and dead-lettered. For sessions: how far an event's time may be
    behind the watermark (the largest event time seen in its partition)."""
    retain: int = Field(default=1440, ge=1, le=100_000)
    """How many windows (or sessions) per key the serving table keeps."""
    idle_timeout: Duration | None = None
    """An input partition without events for this long (wall-clock time) stops holding
    the table's watermark back, as Flink's withIdleness: its watermark is raised to the
    smallest watermark of the partitions that had events within it, so windows become
    final; an event it brings later is late if it is behind that. Unset: a partition
    without events holds every window open."""

    @model_validator(mode="before")
    @classmethod
    def _session_implies_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("session") is not None and "type" not in data:
            return {**data, "type": "session"}
        return data

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.type == "session":
            if self.session is None:
                raise ValueError("a session window needs session: {gap: ...}")
            for name, value in (("size", self.size), ("advance", self.advance)):
                if value is not None:
                    raise ValueError(f"{name}: a session window has no {name} (set session.gap)")
            return self
        if self.session is not None:
            raise ValueError(f"session: a {self.type} window has no session (remove type)")
        if self.size is None:
            raise ValueError(f"size: a {self.type} window needs size")
        if self.type == "hopping":
            if self.advance is None:
                raise ValueError("a hopping window needs advance")
            size, advance = duration_seconds(self.size), duration_seconds(self.advance)
            if advance <= 0:
                raise ValueError("advance must be positive")
            if advance > size or (size / advance) != int(size / advance):
                raise ValueError("advance must divide size (e.g. size 1m, advance 15s)")
            if size / advance > MAX_WINDOWS_PER_EVENT:
                # Each event is counted in size/advance windows: one write per window.
                raise ValueError(
                    f"size/advance is {size / advance:.0f}: an event would fall into that many "
                    f"windows; at most {MAX_WINDOWS_PER_EVENT}"
                )
        if duration_seconds(self.size) <= 0:
            raise ValueError("size must be positive")
        return self

    def size_ms(self) -> int:
        """A tumbling or hopping window's length (ms); 0 for sessions."""
        return int(duration_seconds(self.size) * 1000) if self.size else 0

    def lateness_ms(self) -> int:
        return int(duration_seconds(self.allowed_lateness) * 1000)

    def idle_timeout_ms(self) -> int:
        """0 when partitions never count as idle."""
        return int(duration_seconds(self.idle_timeout) * 1000) if self.idle_timeout else 0

    @field_validator("idle_timeout")
    @classmethod
    def _idle_positive(cls, value: str | None) -> str | None:
        if value is not None and duration_seconds(value) <= 0:
            raise ValueError("idleTimeout must be positive")
        return value


class Aggregate(SpecModel):
    """One aggregate of a window: an operation over a field."""

    op: Literal["count", "sum", "avg", "min", "max", "distinct"]
    """count, sum, avg, min, max, or distinct (count of distinct values)."""
    field: FieldPath | None = None
    """The field aggregated; count needs none."""

    @model_validator(mode="after")
    def _needs_field(self) -> Self:
        if self.op != "count" and self.field is None:
            raise ValueError(f"{self.op} needs a field")
        return self

    @classmethod
    def parse(cls, value: Any) -> Aggregate:
        """Accept the manifest's short forms: `count`, `{sum: fare}`, `{op: sum, field: fare}`."""
        if isinstance(value, Aggregate):
            return value
        if value == "count":
            return cls(op="count")
        if isinstance(value, str):
            raise ValueError(f"unknown aggregate {value!r}: use count or {{op: field}}")
        if isinstance(value, dict) and "op" in value:
            return cls.model_validate(value)
        if isinstance(value, dict) and len(value) == 1:
            op, field = next(iter(value.items()))
            if op not in AGGREGATE_OPS:
                raise ValueError(f"unknown aggregate {op!r}: one of {', '.join(AGGREGATE_OPS)}")
            return cls(op=op, field=field)
        raise ValueError("an aggregate is `count` or {op: field}, e.g. {sum: fare}")


# An aggregate as written in a manifest: the short forms are parsed per key, so an error
# names the aggregate (spec.steps[0].aggregate.revenue).
_ShortAggregate = Annotated[Aggregate, BeforeValidator(Aggregate.parse)]


class CorrelateSpec(SpecModel):
    """Join the step's input with a second topic by key within a timeout, e.g. a trip's
    start and end events by trip_id."""

    with_: TopicName = Field(alias="with")
    """The other topic; must be declared in spec.topics."""
    key: FieldPath
    """Field both streams share (e.g. trip_id)."""
    timeout: GraceDuration
    """How long the first event of a pair waits for its partner."""
    emit_expired: bool = True
    """Emit unmatched events after the timeout, marked `_expired: true`."""
    left_prefix: str = Field(default="", max_length=40)
    """Prefix for fields of the step's own input in the joined event."""
    right_prefix: str = Field(default="", max_length=40)
    """Prefix for fields of the `with` topic's event in the joined event."""


LookupMissing = Literal["drop", "keep", "deadLetter"]


class LookupSpec(SpecModel):
    """Enrich each event with the fields of one entry of a reference table: a latest-state
    table of this Pipeline or a compacted topic. Each worker reads the reference from its
    beginning before processing anything and keeps it current (a later record of a key
    replaces the earlier one, a tombstone or a latest table's deletion removes the key):
    an event is enriched with the reference as it stands when its batch is processed,
    every reference change committed before the batch was fetched included."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "has(self.table) != has(self.topic)",
                    "a lookup reads one reference: set table or topic",
                    ".table",
                ),
            ]
        }
    }

    table: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=60)
    """A latest-state table of this Pipeline (a step with latest and sink.redis.table):
    the lookup applies that step's own processing (filter, map, keyBy, latest.fields,
    latest.deleteWhen) to its input topic, so it sees what the table holds."""
    topic: TopicName | None = None
    """Or a reference topic (declared in spec.topics; cleanup.policy compact keeps it
    small): keyed by the lookup key, each value a JSON object, a null value (tombstone)
    deleting its key."""
    key: FieldPath
    """Field of the event whose value is looked up (as text, like keyBy)."""
    fields: list[FieldPath] | None = Field(default=None, min_length=1, max_length=200)
    """Reference fields copied into the event; unset copies them all."""
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_]*$", max_length=40)
    """Prefix of the copied fields' names in the event (e.g. station_)."""
    on_missing: LookupMissing = "keep"
    """When the reference has no entry for the key (or the event has no key): drop the
    event (counted as filtered), keep it without the reference fields, or deadLetter it
    (with the reason, to the step's deadLetter topic)."""

    @model_validator(mode="after")
    def _one_reference(self) -> Self:
        if (self.table is None) == (self.topic is None):
            raise ValueError("a lookup reads one reference: set table or topic")
        return self


class LatestSpec(SpecModel):
    """Keep each key's latest event (a latest-state table)."""

    fields: list[FieldPath] | None = Field(default=None, max_length=200)
    """Fields kept; unset keeps the whole event."""
    expire_after: Duration | None = None
    """Drop a key after this long without events (e.g. an emergency that was resolved)."""
    delete_when: Expression | None = None
    """CEL: when true for an event, its key is removed from the table (e.g.
    status == 'resolved')."""


class StepAutoscaling(SpecModel):
    """Scale a step's workers on its consumer lag."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "(has(self.maxReplicas) ? self.maxReplicas : 1) >= "
                    "(has(self.minReplicas) ? self.minReplicas : 1)",
                    "maxReplicas must be >= minReplicas",
                    ".maxReplicas",
                )
            ]
        }
    }

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest workers; 0 needs KEDA, or an HPA on a cluster with the HPAScaleToZero
    feature gate (operator setting autoscaling.hpaScaleToZero)."""
    max_replicas: int = Field(default=1, ge=1, le=1000)
    """Most workers; never more than the input topic's partitions."""
    lag_per_replica: int = Field(default=1000, ge=1)
    """Target consumer lag (messages) per worker: desired = ceil(lag / lagPerReplica)."""
    target_catch_up_seconds: int | None = Field(default=None, ge=1, le=86_400)
    """Also run enough workers to drain the backlog within this many seconds at the
    observed events per second of one worker: desired = ceil(lag / (rate per worker x
    targetCatchUpSeconds)). The larger of the two proposals wins. Needs the HPA
    (Prometheus recording rules); KEDA scales on lagPerReplica only."""
    scale_down_stabilization: Duration | None = None
    """How long the HPA (or KEDA's cooldown) waits on a lower proposal before removing
    workers; unset: 5m. Every removal costs the group a rebalance, so it should outlast
    a lull."""
    kind: Literal["hpa", "keda"] | None = None
    """hpa (autoscaling/v2 on an External metric) or keda (a ScaledObject with a Kafka
    trigger); unset uses the operator's default."""

    @field_validator("max_replicas")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("min_replicas", 0):
            raise ValueError("maxReplicas must be >= minReplicas")
        return value

    @field_validator("scale_down_stabilization")
    @classmethod
    def _hpa_window(cls, value: str | None) -> str | None:
        # The HPA's own limit for behavior.scaleDown.stabilizationWindowSeconds.
        if value is not None and duration_seconds(value) > 3600:
            raise ValueError("scaleDownStabilization can be at most 1h")
        return value

    def scale_down_seconds(self) -> int:
        return int(duration_seconds(self.scale_down_stabilization or DEFAULT_SCALE_DOWN))


class StepSpec(SpecModel):
    """One stage of processing: a consumer group on its input topic, run by its own
    Deployment, scaled on its own lag."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!has(self.aggregate) || has(self.window)",
                    "aggregate needs a window",
                    ".aggregate",
                ),
                cel_rule(
                    "!has(self.window) || has(self.aggregate)",
                    "a window needs aggregate",
                    ".window",
                ),
                cel_rule(
                    "!(has(self.window) && has(self.latest))",
                    "set window or latest, not both",
                    ".latest",
                ),
                cel_rule(
                    "!has(self.window) || has(self.keyBy)",
                    "a window needs keyBy",
                    ".keyBy",
                ),
                cel_rule(
                    "!has(self.latest) || has(self.keyBy)",
                    "a latest-state table needs keyBy",
                    ".keyBy",
                ),
                cel_rule(
                    "!has(self.faust) || !("
                    + " || ".join(f"has(self.{f})" for f in BUILT_IN_FIELDS)
                    + ")",
                    "a faust step does its processing in the agent: set none of "
                    + ", ".join(BUILT_IN_FIELDS),
                    ".faust",
                ),
                cel_rule(
                    "!has(self.sink) || !has(self.sink.kafka) || !has(self.sink.kafka.emit) || "
                    "self.sink.kafka.emit == 'events' || "
                    "(has(self.window) && has(self.sink.redis))",
                    "sink.kafka.emit updates or final needs a window and a redis sink (the "
                    "windows live in its table)",
                    ".sink",
                ),
                cel_rule(
                    "!(has(self.resources) && has(self.template) && has(self.template.resources))",
                    "set resources or template.resources, not both",
                    ".resources",
                ),
            ]
        }
    }

    name: Name
    """Unique among the Pipeline's steps; names its Deployment and consumer group."""
    from_: TopicName = Field(alias="from")
    """Input topic; must be declared in spec.topics."""
    dead_letter: TopicName | None = None
    """Topic for events this step cannot process (undecodable, invalid, late), with the
    reason in headers; must be declared in spec.topics."""
    validate_: ValidateStep | None = Field(default=None, alias="validate")
    """JSON Schema check; failing events are dead-lettered."""
    filter: Expression | None = None
    """CEL: events for which it is false are dropped (e.g. fare > 0)."""
    map: dict[str, Expression] | None = Field(default=None, max_length=100)
    """Fields to set, each a CEL expression over the event (e.g. completion_rate:
    double(watch_duration_minutes) / 60.0)."""
    function: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=300
    )
    """Escape hatch: module:callable taking an event dict and returning a dict, a list
    of dicts, or None; the module must be importable in the worker image."""
    lookup: LookupSpec | None = None
    """Enrich events from a latest-state table or a compacted reference topic (after map,
    so map may compute the key; the copied fields are there for what follows)."""
    correlate: CorrelateSpec | None = None
    """Join with a second topic by key."""
    key_by: FieldPath | None = None
    """Field that keys the events (windows, latest-state tables and output keys)."""
    window: WindowSpec | None = None
    """Time windows; needs keyBy and aggregate."""
    aggregate: Annotated[dict[str, _ShortAggregate], WithJsonSchema(_AGGREGATE_SCHEMA)] | None = (
        Field(default=None, min_length=1, max_length=50)
    )
    """Output field to aggregate, e.g. {trips: count, revenue: {sum: fare}}."""
    latest: LatestSpec | None = None
    """Keep each key's latest event; needs keyBy."""
    sink: SinkSpec | None = None
    """Where results go. A step without one emits nothing (use it to validate only)."""
    faust: FaustSpec | None = None
    """Run a Faust agent as this step instead of the built-in processing above (none of
    which may be set); its outputs are faust.outputs."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Workers when autoscaling is unset."""
    autoscaling: StepAutoscaling | None = None
    """Scale on consumer lag instead of a fixed replica count."""
    resources: Resources | None = None
    """Container resources of the step's workers (the same as template.resources)."""
    template: PodTemplate | None = None
    """Volumes, env, resources and placement of the step's pods, merged over
    spec.template."""

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.aggregate is not None and self.window is None:
            raise ValueError("aggregate needs a window")
        if self.window is not None and self.aggregate is None:
            raise ValueError("a window needs aggregate")
        if self.window is not None and self.latest is not None:
            raise ValueError("set window or latest, not both")
        if (self.window is not None or self.latest is not None) and self.key_by is None:
            raise ValueError("keyBy is required with a window or a latest-state table")
        if self.resources is not None and self.template and self.template.resources:
            raise ValueError("set resources or template.resources, not both")
        if self.emits_windows():
            self._check_window_records()
        if self.faust is not None:
            given = [f for f in BUILT_IN_FIELDS if getattr(self, _python_name(f)) is not None]
            if given:
                raise ValueError(
                    f"a faust step does its processing in the agent: remove {', '.join(given)}"
                )
        return self

    def emits_windows(self) -> bool:
        """Whether the kafka sink receives the step's windows (emit updates or final)
        rather than its events."""
        kafka = self.sink.kafka if self.sink is not None else None
        return kafka is not None and kafka.emit != "events"

    def _check_window_records(self) -> None:
        assert self.sink is not None and self.sink.kafka is not None
        emit = self.sink.kafka.emit
        if self.window is None or self.sink.redis is None:
            raise ValueError(
                f"sink.kafka.emit {emit} needs a window and a redis sink (the windows live "
                "in its table)"
            )
        if emit == "updates" and self.window.type == "session":
            raise ValueError(
                "sink.kafka.emit updates: session windows emit final only (a late event "
                "can merge sessions, which an update record cannot say)"
            )
        if self.sink.kafka.key is not None:
            raise ValueError("sink.kafka.key: window records are keyed by the window's key")
        assert self.key_by is not None and self.aggregate is not None
        key_top = self.key_by.split(".", 1)[0]
        for name in self.aggregate:
            if name in WINDOW_RECORD_FIELDS or name == key_top:
                raise ValueError(
                    f"aggregate {name}: a window record already has a field {name!r} "
                    f"(keyBy, {', '.join(WINDOW_RECORD_FIELDS)}); rename the aggregate"
                )
        if key_top in WINDOW_RECORD_FIELDS:
            raise ValueError(
                f"keyBy {self.key_by}: a window record already has a field {key_top!r}"
            )

    def dead_letter_topic(self) -> str | None:
        """Where this step's bad events go: validate's own topic, else the step's."""
        if self.validate_ is not None and self.validate_.dead_letter:
            return self.validate_.dead_letter
        return self.dead_letter

    def input_topics(self) -> list[str]:
        """Every topic the step consumes."""
        return [self.from_] + ([self.correlate.with_] if self.correlate else [])

    def outputs(self) -> list[tuple[tuple[str, ...], str]]:
        """Every topic the step may write, with the field that names it."""
        out: list[tuple[tuple[str, ...], str]] = []
        if self.validate_ is not None and self.validate_.dead_letter:
            out.append((("validate", "deadLetter"), self.validate_.dead_letter))
        if self.dead_letter:
            out.append((("deadLetter",), self.dead_letter))
        if self.sink is not None and self.sink.kafka is not None:
            out.append((("sink", "kafka", "topic"), self.sink.kafka.topic))
        if self.faust is not None:
            out += [(("faust", "outputs", name), t) for name, t in self.faust.outputs.items()]
        return out

    def output_topics(self) -> list[str]:
        """Every topic the step may write."""
        return [topic for _, topic in self.outputs()]


def _python_name(manifest_name: str) -> str:
    """The StepSpec attribute of a manifest field (validate_ for validate, key_by for keyBy)."""
    for name, info in StepSpec.model_fields.items():
        if (info.alias or name) == manifest_name:
            return name
    raise KeyError(manifest_name)
