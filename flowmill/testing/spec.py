"""The test file of `flowmill test`: fixture events in, expected tables, dead letters and
output topics out (format in docs/testing-pipelines.md; `flowmill test --schema` prints
its JSON Schema).

The models check the file's own shape; what needs the manifest (does that source, table
or topic exist, is that table a window table) is checked by flowmill.testing.plan, with
the same kind of field paths.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import orjson
import yaml
from pydantic import BeforeValidator, Field, ValidationError, model_validator

from flowmill.manifest import FieldError, errors_of
from flowmill.manifest_yaml import ManifestYamlError, load_yaml_documents
from flowmill.spec.common import FieldPath, Name, SpecModel, TopicName

TEST_FILE_SUFFIX = ".test.yaml"
"""`flowmill test x.yaml` reads x.test.yaml beside it unless --test names another file."""
DEFAULT_TOLERANCE = 1e-9
MAX_FIXTURE_EVENTS = 100_000
"""A test is a handful of hand-made cases, not a load test."""


class TestFileInvalid(ValueError):
    """A test file that cannot run; `errors` names each field that is wrong."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: invalid test file ({len(errors)} error(s))\n{lines}")


def _key_text(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # left for the str check to refuse
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


def _moment(value: Any) -> Any:
    if isinstance(value, datetime):  # YAML reads an unquoted ISO time as a timestamp
        return time_ms(value.isoformat())
    if isinstance(value, str):
        return time_ms(value)
    return value


Moment = Annotated[int, BeforeValidator(_moment)]
"""A time: ISO 8601 text (no zone means UTC) or epoch milliseconds; held as ms."""
Key = Annotated[str, BeforeValidator(_key_text)]
"""Keys of tables and records are text (keyBy makes them so); a YAML number is accepted,
written as keyBy writes it (1.0 is "1")."""


class Fixture(SpecModel):
    """Events fed to the pipeline in place of its sources: written to the topic in the
    order given, by one producer (so a key's events stay in order, in one partition)."""

    source: Name | None = None
    """The source these events stand for: they go to its `to` topic, keyed by its `key`."""
    topic: TopicName | None = None
    """Or a declared topic to write the events to directly (e.g. a middle topic)."""
    key: FieldPath | None = None
    """With `topic`: the field that keys the records (unset: no key)."""
    events: str | list[dict[str, Any]] | None = None
    """The events: JSON Lines text (one JSON object a line) or a YAML list of objects."""
    file: str | None = Field(default=None, min_length=1, max_length=1000)
    """Or a JSON Lines file, relative to the test file."""

    @model_validator(mode="after")
    def _one_target_one_input(self) -> Self:
        if (self.source is None) == (self.topic is None):
            raise ValueError("set exactly one of source, topic")
        if (self.events is None) == (self.file is None):
            raise ValueError("set exactly one of events, file")
        if self.key is not None and self.source is not None:
            raise ValueError("key: a source fixture is keyed by the source's own key")
        return self

    @property
    def target(self) -> str:
        return f"source {self.source}" if self.source else f"topic {self.topic}"


class WindowExpectation(SpecModel):
    """One window of one key, and the aggregates it must hold."""

    key: Key
    """The key (the keyBy field's value, as text)."""
    start: Moment
    """The window's start: ISO 8601 (2025-08-15T10:00:00Z) or epoch milliseconds."""
    end: Moment | None = None
    """Its end, checked when given."""
    values: dict[str, Any] = Field(default_factory=dict)
    """Aggregate name -> expected value; aggregates left out are not checked."""


class EntryExpectation(SpecModel):
    """One key of a latest-state table and the fields its latest event must hold."""

    key: Key
    """The key."""
    values: dict[str, Any] = Field(default_factory=dict)
    """Field -> expected value; fields left out are not checked."""


class TableExpectation(SpecModel):
    """What one serving table (a step's sink.redis.table) holds once every event is in."""

    windows: list[WindowExpectation] | None = None
    """Windows of a window table."""
    entries: list[EntryExpectation] | None = None
    """Keys of a latest-state table."""
    absent: list[Key] = Field(default_factory=list)
    """Keys the table must not hold (e.g. deleted by deleteWhen)."""
    count: int | None = Field(default=None, ge=0)
    """How many windows (window table) or keys (latest table) it holds."""
    complete: bool = True
    """The listed windows or entries are all it holds: any other is a failure."""

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.windows is not None and self.entries is not None:
            raise ValueError("set windows (a window table) or entries (a latest table), not both")
        return self


class RecordExpectation(SpecModel):
    """One record of a topic: its key and fields of its JSON value."""

    key: Key | None = None
    """The record's key, checked when given."""
    value: dict[str, Any] = Field(default_factory=dict)
    """Fields the value must hold (others are not checked)."""


class TopicExpectation(SpecModel):
    """The records a step wrote to an output topic."""

    count: int | None = Field(default=None, ge=0)
    """How many records the topic holds."""
    records: list[RecordExpectation] | None = None
    """The records."""
    order: Literal["any", "perKey", "exact"] = "any"
    """any: in any order; perKey: each key's records in the order listed (Kafka keeps
    a key's order); exact: in the order listed (a topic of one partition only)."""
    complete: bool = True
    """The listed records are all the topic holds."""


class DeadLetterRecord(RecordExpectation):
    """One dead letter: the original event and why it was refused."""

    reason: str | None = None
    """Text the reason (the flowmill-reason header) must contain."""


class ReasonCount(SpecModel):
    """How many dead letters give a reason containing some text."""

    contains: str = Field(min_length=1)
    """Text of the reason, e.g. `late event` or `region_id`."""
    count: int = Field(ge=0)
    """How many dead letters' reasons contain it."""


class DeadLetterExpectation(SpecModel):
    """The dead letters in one dead-letter topic."""

    count: int | None = Field(default=None, ge=0)
    """How many there are."""
    reasons: list[ReasonCount] = Field(default_factory=list)
    """How many there are per reason."""
    records: list[DeadLetterRecord] | None = None
    """Which events they are, with their reasons (in any order)."""
    complete: bool = True
    """The listed records are all the topic holds."""


class Expectations(SpecModel):
    """What must hold once every step has consumed every fixture event."""

    tables: dict[str, TableExpectation] = Field(default_factory=dict)
    """Serving tables by name."""
    dead_letters: dict[TopicName, DeadLetterExpectation] = Field(default_factory=dict)
    """Dead-letter topics by name."""
    topics: dict[TopicName, TopicExpectation] = Field(default_factory=dict)
    """Output topics by name."""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not (self.tables or self.dead_letters or self.topics):
            raise ValueError("expect nothing: set tables, deadLetters or topics")
        return self


class TestCase(SpecModel):
    """One test: a fresh copy of the pipeline fed these fixtures, checked against expect."""

    name: str = Field(min_length=1, max_length=200)
    """Names the test in the report (and for --case)."""
    description: str | None = Field(default=None, max_length=2000)
    """What the test shows."""
    fixtures: list[Fixture] = Field(min_length=1, max_length=50)
    """The events fed in; sources without a fixture do not run."""
    expect: Expectations
    """What the tables, dead letters and output topics must hold."""
    tolerance: float | None = Field(default=None, ge=0)
    """Relative and absolute tolerance of number comparisons (default the file's)."""

    @model_validator(mode="after")
    def _distinct_targets(self) -> Self:
        targets = [f.target for f in self.fixtures]
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"one fixture per source or topic; repeated: {', '.join(repeated)}")
        return self


class TestFile(SpecModel):
    """A manifest's tests (k8s/examples/streampulse.test.yaml beside streampulse.yaml)."""

    pipeline: Name | None = None
    """The Pipeline tested, when the manifest holds several."""
    tolerance: float = Field(default=DEFAULT_TOLERANCE, ge=0)
    """Relative and absolute tolerance of number comparisons."""
    tests: list[TestCase] = Field(min_length=1, max_length=200)
    """The tests, run one after the other, each on its own copy of the pipeline."""

    @model_validator(mode="after")
    def _distinct_names(self) -> Self:
        names = [t.name for t in self.tests]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"test names must be unique; repeated: {', '.join(repeated)}")
        return self


def time_ms(value: str | int) -> int:
    """Epoch milliseconds of a window bound: ISO 8601 (no zone means UTC) or ms."""
    if isinstance(value, int):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or epoch milliseconds: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def iso(ms: int) -> str:
    """The ISO 8601 UTC text of epoch milliseconds, as the report shows window bounds."""
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace(".000+00:00", "Z").replace("+00:00", "Z")


def load_test_file(path: str | Path) -> TestFile:
    """The test file at `path`, or TestFileInvalid naming every wrong field."""
    source = str(path)
    try:
        documents = [d for d in load_yaml_documents(Path(path).read_bytes()) if d is not None]
    except ManifestYamlError as err:
        raise TestFileInvalid(source, [FieldError(err.where, err.problem)]) from None
    except yaml.YAMLError as err:
        raise TestFileInvalid(source, [FieldError("(yaml)", str(err))]) from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise TestFileInvalid(source, [FieldError("(document)", "expected one YAML mapping")])
    try:
        return TestFile.model_validate(documents[0])
    except ValidationError as err:
        raise TestFileInvalid(source, errors_of(err)) from None


def fixture_events(fixture: Fixture, test_dir: Path, where: str) -> list[dict[str, Any]]:
    """The fixture's events in order; FieldError (as TestFileInvalid) names the line."""
    if fixture.file is not None:
        path = test_dir / fixture.file
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise _invalid(f"{where}.file", f"cannot read {path}: {err.strerror}") from None
        return _jsonl(text, f"{where}.file ({fixture.file})")
    if isinstance(fixture.events, list):
        return fixture.events
    assert fixture.events is not None
    return _jsonl(fixture.events, f"{where}.events")


def _jsonl(text: str, where: str) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            raise _invalid(f"{where} line {number}", f"not JSON: {err}") from None
        if not isinstance(event, dict):
            raise _invalid(f"{where} line {number}", "expected a JSON object")
        events.append(event)
        if len(events) > MAX_FIXTURE_EVENTS:
            raise _invalid(where, f"more than {MAX_FIXTURE_EVENTS} events")
    return events


def _invalid(path: str, message: str) -> TestFileInvalid:
    return TestFileInvalid("test file", [FieldError(path, message)])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a test file (for editors: yaml-language-server's $schema)."""
    return TestFile.model_json_schema(by_alias=True)
