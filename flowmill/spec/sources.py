"""Where events come from: an HTTP feed, a file, a generator, or an existing topic."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from flowmill.redact import url_password
from flowmill.spec.common import (
    Duration,
    FieldPath,
    Name,
    SecretKeyRef,
    SpecModel,
    TopicName,
    cel_rule,
    exactly_one_of_rule,
)
from flowmill.spec.launch import http_header_env
from flowmill.spec.pod_template import PodTemplate

SOURCE_KINDS = ["httpPoll", "fileReplay", "generator", "kafka"]


class HttpPollSource(SpecModel):
    """Poll a JSON document over HTTP, as GBFS feeds and most REST APIs publish data."""

    url: str = Field(min_length=1, max_length=2000, pattern=r"^https?://")
    """The URL to GET (http or https)."""
    interval: Duration = "30s"
    """Time between polls; a GBFS document's `ttl` stretches it when larger."""
    explode: FieldPath | None = None
    """Path to an array in the document (e.g. data.stations); each element becomes one
    event. Without it the whole document is one event."""
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Extra request headers that are not secret (the spec is readable by whoever reads
    the Pipeline); Authorization and the like go in headersFrom."""
    headers_from: dict[str, SecretKeyRef] | None = Field(default=None, max_length=16)
    """Request headers whose values are Secret keys, e.g. {Authorization: {name: feed,
    key: header}} with the Secret holding `Bearer <token>`."""
    timeout: Duration = "10s"
    """How long one request may take before it counts as a failure."""
    honour_ttl: bool = True
    """Respect GBFS `ttl` and skip snapshots whose `last_updated` did not change."""
    stamp_field: FieldPath | None = "last_updated"
    """Field copied from the document onto each exploded event, so events keep the
    snapshot time; unset to copy nothing."""

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if url_password(value) is not None:
            raise PydanticCustomError("password_in_url", HTTP_URL_PASSWORD_REFUSED)
        return value

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        secret = sorted(h for h in value if h.lower() in CREDENTIAL_HEADERS)
        if secret:
            raise PydanticCustomError(
                "credential_header",
                "{headers} carry credentials, which the spec would show to anyone who can "
                "read the Pipeline: put the values in a Secret and name it in headersFrom",
                {"headers": ", ".join(secret)},
            )
        return value

    @model_validator(mode="after")
    def _distinct_headers(self) -> Self:
        secret = self.headers_from or {}
        both = {h.lower() for h in self.headers} & {h.lower() for h in secret}
        if both:
            raise ValueError(f"headers and headersFrom both set {', '.join(sorted(both))}")
        variables: dict[str, str] = {}
        for header in secret:
            if not _HEADER_NAME.match(header):
                raise ValueError(f"headersFrom: {header!r} is not an HTTP header name")
            variable = http_header_env("x", header)
            if variable in variables:
                raise ValueError(
                    f"headersFrom: {variables[variable]!r} and {header!r} differ only in "
                    "punctuation or case"
                )
            variables[variable] = header
        return self


HTTP_URL_PASSWORD_REFUSED = (
    "carries a password, which the spec would show to anyone who can read the Pipeline "
    "(and its ConfigMap): put `Basic <base64 of user:password>` in a Secret and name it in "
    "headersFrom: {Authorization: {name: ..., key: ...}}"
)
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Headers refused in httpPoll.headers: their values are credentials."""
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP field name (RFC 9110 token)."""


class FileReplaySource(SpecModel):
    """Replay a CSV or JSON Lines file, at a fixed rate or at its original pace."""

    path: str = Field(min_length=1, max_length=1000)
    """File to read, inside the worker's filesystem (mount it with a volume)."""
    format: Literal["csv", "jsonl"] = "csv"
    """`csv` (header row names the fields) or `jsonl` (one JSON object per line)."""
    rate: float | None = Field(default=None, gt=0)
    """Events per second. Leave unset with `timeField` to replay the original timing."""
    time_field: FieldPath | None = None
    """Field holding each event's time; with `speed` the gaps between events are kept."""
    speed: float = Field(default=1.0, gt=0)
    """With `timeField`: 2.0 replays twice as fast as the events happened."""
    loop: bool = False
    """Start again from the top after the last line (for demos)."""


GeneratorKind = Literal[
    "int", "float", "choice", "uuid", "sequence", "timestamp", "string", "bool", "gauss"
]


class GeneratedField(SpecModel):
    """How one field of a synthetic event is drawn."""

    type: GeneratorKind
    """int/float: uniform in [min, max]; gauss: normal(mean, stddev); choice: one of
    `values`; uuid; sequence: 0, 1, 2, ...; timestamp: the event's creation time (ISO
    8601); string: `values` chosen at random or random letters; bool: true with
    probability `p`."""
    min: float | None = None
    """Lower bound for int and float."""
    max: float | None = None
    """Upper bound for int and float."""
    mean: float | None = None
    """Mean for gauss."""
    stddev: float | None = Field(default=None, ge=0)
    """Standard deviation for gauss."""
    values: list[str] | None = Field(default=None, max_length=1000)
    """Candidates for choice (and string)."""
    p: float | None = Field(default=None, ge=0, le=1)
    """Probability of true for bool."""
    precision: int | None = Field(default=None, ge=0, le=12)
    """Decimal places kept for float and gauss."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.type in ("int", "float") and (self.min is None or self.max is None):
            raise ValueError(f"a {self.type} field needs both min and max")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError("max must be >= min")
        if self.type == "choice" and not self.values:
            raise ValueError("a choice field needs values")
        return self


class GeneratorSource(SpecModel):
    """Synthetic events from a field spec, seeded so runs repeat exactly."""

    fields: dict[str, GeneratedField] = Field(min_length=1, max_length=100)
    """Field name to how its value is drawn."""
    rate: float = Field(default=100.0, gt=0)
    """Events per second."""
    seed: int = 0
    """Random seed: the same seed yields the same events."""
    count: int | None = Field(default=None, ge=1)
    """Stop after this many events; unset runs forever."""


class KafkaSource(SpecModel):
    """Read an existing topic, possibly on another cluster."""

    topic: TopicName
    """The topic to read."""
    bootstrap_servers: str | None = Field(default=None, max_length=1000)
    """Brokers of another cluster; unset means the Pipeline's own Kafka."""
    start_from: Literal["earliest", "latest"] = "earliest"
    """Where a new consumer group starts."""


class SourceSpec(SpecModel):
    """One ingestion process: it reads from outside and writes events to a topic."""

    model_config = SpecModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel_rule(
                    exactly_one_of_rule(SOURCE_KINDS),
                    "a source sets exactly one of httpPoll, fileReplay, generator, kafka",
                )
            ]
        }
    }

    name: Name
    """Unique among the Pipeline's sources; names its Deployment."""
    to: TopicName
    """Topic the events are written to; must be declared in spec.topics."""
    key: FieldPath | None = None
    """Field used as the Kafka message key (keeps a key's events in order)."""
    http_poll: HttpPollSource | None = None
    """Poll an HTTP JSON endpoint."""
    file_replay: FileReplaySource | None = None
    """Replay a CSV or JSON Lines file."""
    generator: GeneratorSource | None = None
    """Generate synthetic events."""
    kafka: KafkaSource | None = None
    """Mirror an existing Kafka topic."""
    template: PodTemplate | None = None
    """Volumes (e.g. the file a fileReplay reads), env, resources and placement of the
    source's pod, merged over spec.template."""

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        chosen = [k for k in SOURCE_KINDS if getattr(self, _snake(k)) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "a source sets exactly one of httpPoll, fileReplay, generator, kafka"
                f" (got {', '.join(chosen) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        """Which of the source kinds this is, by its manifest name."""
        return next(k for k in SOURCE_KINDS if getattr(self, _snake(k)) is not None)


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)
