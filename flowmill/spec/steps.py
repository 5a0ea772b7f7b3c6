"""What a step does to the events of its input topic, in the order the fields are listed:
validate, filter, map, function, correlate, keyBy, window + aggregate or latest, sink."""

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
from flowmill.spec.pod_template import PodTemplate, Resources
from flowmill.spec.sinks import SinkSpec

DEFAULT_SCALE_DOWN = "5m"
"""Scale-down stabilization of a step's autoscaler when autoscaling sets none."""
MAX_WINDOWS_PER_EVENT = 1000
"""Most hopping windows one event may fall into (size / advance)."""
AGGREGATE_OPS = ("count", "sum", "avg", "min", "max", "distinct")

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
            ]
        }
    }

    type: Literal["tumbling", "hopping"] = "tumbling"
    """tumbling: back-to-back windows of `size`; hopping: windows of `size` starting
    every `advance`, so they overlap."""
    size: WindowDuration
    """Length of a window."""
    advance: WindowDuration | None = None
    """Hopping windows only: time between window starts (must divide size)."""
    event_time: FieldPath | None = None
    """Field with the event's time (ISO 8601 or epoch seconds/ms). Unset windows by
    processing time."""
    allowed_lateness: GraceDuration = "0s"
    """How long after a window ends its late events are still counted; later ones are
    counted as late and dead-lettered."""
    retain: int = Field(default=1440, ge=1, le=100_000)
    """How many windows per key the serving table keeps."""

    @model_validator(mode="after")
    def _hopping(self) -> Self:
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
        return self

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
        return out

    def output_topics(self) -> list[str]:
        """Every topic the step may write."""
        return [topic for _, topic in self.outputs()]
