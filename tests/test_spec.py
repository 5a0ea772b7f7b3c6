"""The Pipeline spec: valid manifests load, invalid ones fail with the field named."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowmill.manifest import PipelineInvalid, load_pipeline, parse_pipeline
from flowmill.spec import duration_seconds

DATA = Path(__file__).parent / "data"
Mutation = Callable[[dict[str, Any]], None]


def sketch() -> dict[str, Any]:
    return yaml.safe_load((DATA / "design_sketch.yaml").read_text())


def test_design_sketch_validates() -> None:
    pipeline = load_pipeline(DATA / "design_sketch.yaml")
    step = pipeline.spec.step("by-region")
    assert step.from_ == "trips"
    assert step.key_by == "region_id"
    assert {name: (a.op, a.field) for name, a in (step.aggregate or {}).items()} == {
        "trips": ("count", None),
        "revenue": ("sum", "fare"),
        "avg_fare": ("avg", "fare"),
        "max_fare": ("max", "fare"),
    }
    assert step.dead_letter_topic() == "trips-dlq"
    assert pipeline.spec.topic("trips").config == {"retention.ms": "86400000"}


def test_every_feature_validates() -> None:
    pipeline = load_pipeline(DATA / "full_features.yaml")
    kinds = {s.kind for s in pipeline.spec.sources}
    assert kinds == {"httpPoll", "generator", "fileReplay", "kafka"}
    # YAML integers in topic configs become the strings Kafka expects.
    assert pipeline.spec.topic("dlq").config["retention.ms"] == "604800000"
    join = pipeline.spec.step("join-trips")
    assert join.input_topics() == ["starts", "ends"]
    assert join.output_topics() == ["trips"]
    assert [t for _, t in pipeline.tables()] == ["stations", "kpis"]


def test_manifest_round_trips() -> None:
    pipeline = load_pipeline(DATA / "full_features.yaml")
    again = parse_pipeline(pipeline.to_manifest())
    assert again == pipeline


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("1m", 60), ("24h", 86400), ("7d", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (list indexes as numbers) in the sketch."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


def _both(*mutations: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


INVALID: list[tuple[str, Mutation, str, str]] = [
    (
        "lookup of a window table",
        _set("spec.steps.0.lookup", {"table": "region_metrics", "key": "region_id"}),
        "spec.steps[0].lookup.table",
        "not a latest-state table",
    ),
    (
        "lookup of an unknown table",
        _set("spec.steps.0.lookup", {"table": "regions", "key": "region_id"}),
        "spec.steps[0].lookup.table",
        "no step of this Pipeline writes a table 'regions'",
    ),
    (
        "lookup of an undeclared topic",
        _set("spec.steps.0.lookup", {"topic": "regions", "key": "region_id"}),
        "spec.steps[0].lookup.topic",
        "not declared",
    ),
    (
        "lookup of a table and a topic",
        _set("spec.steps.0.lookup", {"table": "t", "topic": "trips", "key": "region_id"}),
        "spec.steps[0].lookup",
        "set table or topic",
    ),
    (
        "undeclared step input",
        _set("spec.steps.0.from", "nope"),
        "spec.steps[0].from",
        "not declared",
    ),
    (
        "undeclared source output",
        _set("spec.sources.0.to", "nope"),
        "spec.sources[0].to",
        "not declared",
    ),
    (
        "undeclared dead letter",
        _set("spec.steps.0.validate.deadLetter", "nope"),
        "spec.steps[0].validate.deadLetter",
        "not declared",
    ),
    (
        "bad duration",
        _set("spec.steps.0.window.size", "1minute"),
        "spec.steps[0].window.size",
        "duration",
    ),
    (
        "max below min",
        _set("spec.steps.0.autoscaling.maxReplicas", 0),
        "spec.steps[0].autoscaling.maxReplicas",
        "",
    ),
    (
        "max below min (consistent)",
        _set("spec.steps.0.autoscaling.minReplicas", 9),
        "spec.steps[0].autoscaling.maxReplicas",
        "maxReplicas must be >= minReplicas",
    ),
    (
        "unknown aggregate",
        _set("spec.steps.0.aggregate.revenue", {"median": "fare"}),
        "spec.steps[0].aggregate.revenue",
        "unknown aggregate",
    ),
    (
        "typo in a field",
        _set("spec.steps.0.keyby", "region_id"),
        "spec.steps[0].keyby",
        "unknown field",
    ),
    ("missing topics", _set("spec.topics", _DELETE), "spec.topics", "required"),
    (
        "zero partitions",
        _set("spec.topics.0.partitions", 0),
        "spec.topics[0].partitions",
        "greater than or equal to 1",
    ),
    ("bad name", _set("spec.steps.0.name", "By_Region"), "spec.steps[0].name", "DNS-1123"),
    (
        "two source kinds",
        _set("spec.sources.0.generator", {"fields": {"x": {"type": "uuid"}}}),
        "spec.sources[0]",
        "exactly one of",
    ),
    (
        "hopping without advance",
        _set("spec.steps.0.window.type", "hopping"),
        "spec.steps[0].window",
        "advance",
    ),
    (
        "window without keyBy",
        _set("spec.steps.0.keyBy", _DELETE),
        "spec.steps[0]",
        "keyBy is required",
    ),
    (
        "bad CEL",
        _set("spec.steps.0.filter", "fare >"),
        "spec.steps[0].filter",
        "invalid CEL expression",
    ),
    (
        "bad JSON Schema",
        _set("spec.steps.0.validate.schema", {"type": "nonsense"}),
        "spec.steps[0].validate.schema",
        "not a valid JSON Schema",
    ),
    (
        "duplicate topic",
        _set("spec.topics.1.name", "trips"),
        "spec.topics[1].name",
        "duplicate name 'trips'",
    ),
    (
        "redis url and secret",
        _set("spec.redis.secretRef", {"name": "r", "key": "url"}),
        "spec.redis",
        "not both",
    ),
    ("bad redis url", _set("spec.redis.url", "http://x"), "spec.redis.url", "pattern"),
    ("wrong kind", _set("kind", "Pipe"), "kind", "'Pipeline'"),
    (
        "S3 endpoint not http(s)",
        _set("spec.steps.0.sink", {"parquet": {"s3": {"bucket": "lake", "endpoint": "ftp://h"}}}),
        "spec.steps[0].sink.parquet.s3.endpoint",
        "is not http(s)://host[:port]",
    ),
    (
        "S3 endpoint with a path",
        _set(
            "spec.steps.0.sink", {"parquet": {"s3": {"bucket": "lake", "endpoint": "http://h/x"}}}
        ),
        "spec.steps[0].sink.parquet.s3.endpoint",
        "more than a scheme, host and port",
    ),
    (
        "emit windows without a redis sink",
        _set("spec.steps.0.sink", {"kafka": {"topic": "trips", "emit": "final"}}),
        "spec.steps[0]",
        "emit final needs a window and a redis sink",
    ),
    (
        "emitted aggregate named like a record field",
        _both(
            _set("spec.steps.0.aggregate.final", "count"),
            _set("spec.steps.0.sink.kafka", {"topic": "trips", "emit": "final"}),
        ),
        "spec.steps[0]",
        "aggregate final: a window record already has a field 'final'",
    ),
    (
        "emit updates of sessions",
        _both(
            _set("spec.steps.0.window", {"session": {"gap": "30m"}}),
            _set("spec.steps.0.sink.kafka", {"topic": "trips", "emit": "updates"}),
        ),
        "spec.steps[0]",
        "session windows emit final only",
    ),
    (
        "a window record timestamp on events",
        _set("spec.steps.0.sink.kafka", {"topic": "trips", "timestamp": "start"}),
        "spec.steps[0].sink.kafka",
        "sink.kafka.timestamp stamps window records: set emit updates or final",
    ),
    (
        "window records keyed by a field",
        _set("spec.steps.0.sink.kafka", {"topic": "trips", "emit": "final", "key": "fare"}),
        "spec.steps[0]",
        "window records are keyed by the window's key",
    ),
    (
        "idle timeout of zero",
        _set("spec.steps.0.window.idleTimeout", "0s"),
        "spec.steps[0].window.idleTimeout",
        "idleTimeout must be positive",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(m, p, f, id=name) for name, m, p, f in INVALID],
)
def test_invalid_spec_names_the_field(mutate: Mutation, path: str, fragment: str) -> None:
    doc = copy.deepcopy(sketch())
    mutate(doc)
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(doc)
    errors = caught.value.errors
    matching = [e for e in errors if e.path == path]
    assert matching, f"no error at {path}; got {[str(e) for e in errors]}"
    assert any(fragment in e.message for e in matching), [str(e) for e in matching]


def test_s3_endpoint_with_credentials_is_refused_without_echoing_them() -> None:
    doc = copy.deepcopy(sketch())
    endpoint = "http://AKID:hunter2secret@h:9000"
    doc["spec"]["steps"][0]["sink"] = {"parquet": {"s3": {"bucket": "lake", "endpoint": endpoint}}}
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(doc)
    (error,) = [e for e in caught.value.errors if e.path.endswith("s3.endpoint")]
    assert "credentialsSecret" in error.message
    assert "hunter2secret" not in str(caught.value)


def test_every_reference_error_is_reported_at_once() -> None:
    doc = sketch()
    doc["spec"]["steps"][0]["from"] = "a"
    doc["spec"]["sources"][0]["to"] = "b"
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(doc)
    assert {e.path for e in caught.value.errors} == {"spec.steps[0].from", "spec.sources[0].to"}


def _flowmill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowmill.cli", *args], capture_output=True, text=True, check=False
    )


def test_validate_command(tmp_path: Path) -> None:
    ok = _flowmill("validate", str(DATA / "design_sketch.yaml"), str(DATA / "full_features.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "Pipeline trip-metrics is valid" in ok.stdout

    doc = sketch()
    doc["spec"]["steps"][0]["from"] = "nope"
    doc["spec"]["steps"][0]["window"]["size"] = "soon"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = _flowmill("validate", str(bad))
    assert result.returncode == 1
    assert "spec.steps[0].window.size" in result.stderr
