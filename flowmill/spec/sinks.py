"""Where a step's results go: Redis for serving, a Kafka topic, a Parquet lake."""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from flowmill.spec.common import (
    Duration,
    FieldPath,
    SpecModel,
    TopicName,
    cel_rule,
)

SINK_KINDS = ["redis", "kafka", "parquet"]


class GeoFields(SpecModel):
    """Which fields hold a position, so the API can answer bounding-box queries."""

    lat: FieldPath
    """Latitude field (degrees)."""
    lon: FieldPath
    """Longitude field (degrees)."""


TIMESTAMP_NEEDS_WINDOW_RECORDS = (
    "sink.kafka.timestamp stamps window records: set emit updates or final (events keep "
    "the producer's time)"
)


class RedisSink(SpecModel):
    """A serving table in Redis that the API reads; values are written absolutely, so a
    replay after a crash rewrites the same value instead of adding to it."""

    table: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", min_length=1, max_length=60)
    """Table name; the API serves it at /pipelines/{pipeline}/tables/{table}."""
    ttl: Duration | None = None
    """How long an entry lives after its last write; unset keeps it forever."""
    geo: GeoFields | None = None
    """Position fields of a latest-state table, for bounding-box queries and the map."""
    publish: bool = True
    """Publish each write for live updates (SSE/WebSocket)."""


class KafkaSink(SpecModel):
    """Write results to a topic, where further steps or other systems read them."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "!has(self.timestamp) || self.timestamp == 'emitted' || "
                    "(has(self.emit) && self.emit != 'events')",
                    TIMESTAMP_NEEDS_WINDOW_RECORDS,
                    ".timestamp",
                )
            ]
        }
    }

    topic: TopicName
    """Output topic; must be declared in spec.topics."""
    key: FieldPath | None = None
    """Field used as the message key; defaults to the step's keyBy. Window records
    (`emit` updates or final) are keyed by their window's key."""
    emit: Literal["events", "updates", "final"] = "events"
    """What the topic receives. `events`: each event the step outputs. On a window step
    with a redis sink, its windows instead: `final`, each window once, when the table's
    watermark passes its end plus allowedLateness; `updates` (tumbling and hopping), a
    window's aggregates each time a batch changes them. A window record's value holds the
    keyBy field, `start` and `end` (epoch ms; sessions also `last_event`), the aggregates,
    `final` and `watermark`; its timestamp is set by `timestamp`. Written in Kafka
    transactions from the table's own fenced writes, so read_committed consumers see each
    window record exactly once, also after a crash."""
    timestamp: Literal["emitted", "start", "end"] = "emitted"
    """The Kafka timestamp of a window record (emit updates or final): `emitted`, the
    moment it is written; `start`, the window's start; `end`, its last millisecond
    (end - 1, so the record falls inside its own window, as Flink stamps window results).
    Kafka's retention counts from record timestamps, so windows of old data (a replay)
    stamped `start` or `end` may be deleted by the broker before anyone reads them;
    hence the default, which keeps them for the topic's retention.ms."""

    @model_validator(mode="after")
    def _timestamp_of_window_records(self) -> Self:
        if self.timestamp != "emitted" and self.emit == "events":
            raise ValueError(TIMESTAMP_NEEDS_WINDOW_RECORDS)
        return self


class S3Target(SpecModel):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph)."""

    bucket: str = Field(min_length=3, max_length=63)
    """Bucket name."""
    prefix: str = Field(default="", max_length=500)
    """Key prefix inside the bucket."""
    endpoint: str | None = Field(default=None, max_length=500)
    """Endpoint URL for non-AWS stores; unset uses AWS."""
    region: str | None = Field(default=None, max_length=40)
    """Bucket region."""
    credentials_secret: str | None = Field(default=None, max_length=253)
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, mounted as environment."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_a_host(cls, value: str | None) -> str | None:
        # The workers hand pyarrow the host and the scheme apart; a path or another scheme
        # would be dropped silently there.
        if value is None:
            return value
        parts = urlsplit(value if "://" in value else f"//{value}")
        if parts.scheme not in ("", "http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not http(s)://host[:port] or host[:port]")
        if parts.username is not None:  # not echoed: it may hold a password
            raise ValueError("holds a user name; credentials come from credentialsSecret")
        if parts.path.strip("/") or parts.query:
            raise ValueError(f"{value!r} holds more than a scheme, host and port")
        return value


class ParquetSink(SpecModel):
    """Land events as Parquet files partitioned by date (and hour), readable by DuckDB,
    Athena, Spark or pandas."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule("has(self.path) != has(self.s3)", "set exactly one of path, s3")
            ]
        }
    }

    path: str | None = Field(default=None, max_length=1000)
    """Local or mounted directory; set this or s3."""
    s3: S3Target | None = None
    """Write to an S3-compatible bucket instead of a path."""
    time_field: FieldPath | None = None
    """Field that decides an event's partition; unset uses the time it was processed."""
    partition_by: Literal["date", "hour"] = "hour"
    """`date` writes date=YYYY-MM-DD/, `hour` adds hour=HH/ below it."""
    flush_interval: Duration = "60s"
    """Longest time events wait in memory before a file is written."""
    max_rows: int = Field(default=100_000, ge=1)
    """A file is written once this many events are waiting."""

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.path is None) == (self.s3 is None):
            raise ValueError("a parquet sink sets exactly one of path, s3")
        return self


class SinkSpec(SpecModel):
    """The outputs of a step: redis and kafka may be combined; parquet stands alone."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    "has(self.redis) || has(self.kafka) || has(self.parquet)",
                    "a sink sets at least one of redis, kafka, parquet",
                ),
                cel_rule(
                    "!has(self.parquet) || !(has(self.redis) || has(self.kafka))",
                    "a parquet sink stands alone: read the same topic from a second step",
                    ".parquet",
                ),
            ]
        }
    }

    redis: RedisSink | None = None
    """Serving table in Redis."""
    kafka: KafkaSink | None = None
    """Output topic."""
    parquet: ParquetSink | None = None
    """Parquet lake."""

    @model_validator(mode="after")
    def _at_least_one(self) -> Self:
        if self.redis is None and self.kafka is None and self.parquet is None:
            raise ValueError("a sink sets at least one of redis, kafka, parquet")
        if self.parquet is not None and (self.redis is not None or self.kafka is not None):
            # A lake file is flushed minutes after its events are consumed, while serving
            # tables advance every batch; one consumer group cannot checkpoint both, so
            # each gets its own step (and its own group) on the same topic.
            raise ValueError("a parquet sink stands alone: read the same topic from a second step")
        return self
