"""Hostile manifests: each is refused with the field (or the YAML line) named, quickly,
and never with a traceback; the run-time blow-ups of issue 15 are refused up front."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from referencing.exceptions import Unresolvable

from flowmill.cli import main
from flowmill.manifest import (
    PipelineInvalid,
    parse_pipeline,
    pipeline_warnings,
    pipelines_from_yaml,
)
from flowmill.spec.json_schema import event_validator, first_violation

DATA = Path(__file__).parent / "data"
SKETCH = (DATA / "design_sketch.yaml").read_text()


def sketch() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SKETCH)
    return document


def refused(document: dict[str, Any] | bytes | str) -> str:
    """The error text of a manifest that must be refused, within a second."""
    started = time.monotonic()
    with pytest.raises(PipelineInvalid) as caught:
        if isinstance(document, dict):
            parse_pipeline(document)
        else:
            pipelines_from_yaml(document)
    assert time.monotonic() - started < 1.0
    return str(caught.value)


# --- YAML the loader refuses -------------------------------------------------------


def test_non_utf8_byte_names_its_offset() -> None:
    data = SKETCH.encode().replace(b"by-region", b"by-r\xe9gion", 1)
    offset = data.index(b"\xe9")
    assert f"not UTF-8: byte 0xe9 at offset {offset}" in refused(data)


def test_five_thousand_digit_integer() -> None:
    text = SKETCH.replace("partitions: 6", "partitions: " + "9" * 5000, 1)
    assert "partitions: " + "9" * 5000 in text
    assert "integer of 5000 characters" in refused(text)


def test_integer_beyond_int64() -> None:
    text = SKETCH.replace("partitions: 6", f"partitions: {2**63}", 1)
    assert "beyond int64" in refused(text)


def test_deep_nesting_flow_and_block() -> None:
    assert "nested deeper than" in refused("a: " + "[" * 5000 + "]" * 5000)
    assert "nested deeper than 100 levels" in refused(
        "".join(" " * i + "k:\n" for i in range(1000))
    )


def test_alias_bomb_refused_while_composing() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    assert "more than 50000 values (each alias counted at its full size)" in refused(
        "\n".join(lines)
    )


def test_recursive_alias() -> None:
    assert "an alias inside its own anchor" in refused("a: &a [1, *a]\n")


def test_duplicate_key_names_key_and_lines() -> None:
    text = SKETCH.replace("  topics:\n", "  topics: []\n  topics:\n", 1)
    message = refused(text)
    assert "duplicate key 'topics'" in message
    assert "first at line" in message


def test_non_finite_float() -> None:
    assert "is not a finite number" in refused("a: .inf\n")


def test_oversized_manifest() -> None:
    assert "at most 1048576 are accepted" in refused("a: '" + "x" * (1 << 20) + "'\n")


def test_merge_keys_may_override() -> None:
    # `<<` merging is the one legitimate repetition of a key.
    docs = pipelines_from_yaml(
        SKETCH + "\n---\nkind: ConfigMap\nbase: &b {x: 1}\ndata:\n  <<: *b\n  x: 2\n"
    )
    assert [p.name for p in docs] == ["trip-metrics"]


# --- Spec validation -------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _step(d: dict[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = d["spec"]["steps"][0]
    return step


def _set(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        node: Any = d
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value

    return mutate


def _schema(schema: dict[str, Any]) -> Mutation:
    return _set("spec.steps.0.validate", {"schema": schema})


def _hopping(size: str, advance: str) -> Mutation:
    return _set("spec.steps.0.window", {"type": "hopping", "size": size, "advance": advance})


def _add_topic(name: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["spec"]["topics"].append({"name": name})

    return mutate


def _mirror_named(name: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["spec"]["sources"].append(
            {
                "name": name,
                "to": "trips",
                "kafka": {"topic": "elsewhere", "bootstrapServers": "x:9092"},
            }
        )

    return mutate


def _chain_back(d: dict[str, Any]) -> None:
    d["spec"]["topics"].append({"name": "out"})
    _step(d)["sink"]["kafka"] = {"topic": "out"}
    d["spec"]["steps"].append(
        {"name": "back", "from": "out", "sink": {"kafka": {"topic": "trips"}}}
    )


CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "huge window",
        _set("spec.steps.0.window.size", "999999999999999d"),
        "spec.steps[0].window.size",
        "at most 366d",
    ),
    (
        "huge ttl",
        _set("spec.steps.0.sink.redis.ttl", "999999999999999d"),
        "spec.steps[0].sink.redis.ttl",
        "at most 3650d",
    ),
    (
        "huge lateness",
        _set("spec.steps.0.window.allowedLateness", "31d"),
        "spec.steps[0].window.allowedLateness",
        "at most 30d",
    ),
    ("1h every 1ms", _hopping("1h", "1ms"), "spec.steps[0].window", "at most 1000"),
    ("zero advance", _hopping("1m", "0s"), "spec.steps[0].window", "advance must be positive"),
    (
        "remote $ref",
        _schema({"$ref": "http://169.254.169.254/latest/meta-data"}),
        "spec.steps[0].validate.schema",
        "remote reference",
    ),
    (
        "file $ref",
        _schema({"properties": {"a": {"$ref": "file:///etc/passwd"}}}),
        "spec.steps[0].validate.schema",
        "/properties/a/$ref: remote reference",
    ),
    (
        "recursive $ref",
        _schema({"$ref": "#"}),
        "spec.steps[0].validate.schema",
        "recursive reference",
    ),
    (
        "mutual $ref",
        _schema(
            {
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
                "$ref": "#/$defs/a",
            }
        ),
        "spec.steps[0].validate.schema",
        "recursive reference",
    ),
    (
        "dangling $ref",
        _schema({"$ref": "#/$defs/none"}),
        "spec.steps[0].validate.schema",
        "points at nothing",
    ),
    (
        "backreference pattern",
        _schema({"properties": {"s": {"pattern": "^(a+)\\1$"}}}),
        "spec.steps[0].validate.schema",
        "/properties/s/pattern: pattern",
    ),
    (
        "lookahead pattern",
        _schema({"patternProperties": {"(?=x)": {}}}),
        "spec.steps[0].validate.schema",
        "patterns run on RE2",
    ),
    (
        "sink is own input",
        _set("spec.steps.0.sink.kafka", {"topic": "trips"}),
        "spec.steps[0].sink.kafka.topic",
        "writes back to its own input: trips -> trips",
    ),
    (
        "deadLetter is own input",
        _set("spec.steps.0.deadLetter", "trips"),
        "spec.steps[0].deadLetter",
        "writes back to its own input",
    ),
    ("cycle through two steps", _chain_back, "spec.steps[", "trips -> out -> trips"),
    ("topic '.'", _add_topic("."), "spec.topics[", "Kafka refuses '.' and '..'"),
    ("topic '..'", _add_topic(".."), "spec.topics[", "Kafka refuses '.' and '..'"),
    (
        "topic a.b beside a_b",
        lambda d: (_add_topic("a_b")(d), _add_topic("a.b")(d))[0],
        "spec.topics[",
        "collides with 'a_b'",
    ),
    (
        "partitions: true",
        _set("spec.topics.0.partitions", True),
        "spec.topics[0].partitions",
        "expected a number, got true",
    ),
    (
        "replicas: false",
        _set("spec.steps.0.replicas", False),
        "spec.steps[0].replicas",
        "expected a number, got false",
    ),
    ("aggregate {}", _set("spec.steps.0.aggregate", {}), "spec.steps[0].aggregate", "at least 1"),
    (
        "step named like a mirror source",
        _mirror_named("by-region"),
        "spec.steps[0].name",
        "duplicate name 'by-region' (also spec.sources[",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "field", "reason"),
    [pytest.param(m, f, r, id=name) for name, m, f, r in CASES],
)
def test_spec_refuses_with_field_named(mutation: Mutation, field: str, reason: str) -> None:
    document = sketch()
    mutation(document)
    message = refused(copy.deepcopy(document))
    matching = [line for line in message.splitlines() if field in line]
    assert matching, message
    assert any(reason in line for line in matching), message


def test_sketch_itself_is_accepted() -> None:
    assert parse_pipeline(sketch()).name == "trip-metrics"


def test_local_recursion_into_children_is_allowed() -> None:
    document = sketch()
    _schema({"type": "object", "properties": {"child": {"$ref": "#"}}})(document)
    parse_pipeline(document)


# --- The workers' validator -------------------------------------------------------


def test_worker_pattern_runs_in_linear_time() -> None:
    validator = event_validator({"properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}})
    started = time.monotonic()
    reason = first_violation(validator, {"s": "a" * 100_000 + "!"})
    assert time.monotonic() - started < 1.0
    assert reason is not None and "does not match '^(a+)+$'" in reason
    assert first_violation(validator, {"s": "aaaa"}) is None


def test_worker_pattern_properties_and_additional_properties_use_re2() -> None:
    validator = event_validator(
        {"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False}
    )
    assert first_violation(validator, {"x1": 3}) is None
    assert "is not of type 'integer'" in str(first_violation(validator, {"x1": "s"}))
    assert "additional properties are not allowed ('y')" in str(
        first_violation(validator, {"y": 1})
    )


def test_worker_never_fetches_a_reference() -> None:
    # Unreachable through validation; the worker's registry refuses it on its own too.
    validator = event_validator({"$ref": "http://127.0.0.1:9/schema.json"})
    with pytest.raises(Unresolvable, match=re.escape("Unresolvable: http://127.0.0.1:9/")):
        first_violation(validator, {})


def test_deep_event_becomes_a_reason_not_a_crash() -> None:
    validator = event_validator({"type": "object", "properties": {"c": {"$ref": "#"}}})
    event: dict[str, Any] = {}
    node = event
    for _ in range(5000):
        node["c"] = {}
        node = node["c"]
    assert first_violation(validator, event) == "event nested too deeply to validate"


# --- Warnings and the command line --------------------------------------------------


def test_max_replicas_above_partitions_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = sketch()
    _set("spec.steps.0.autoscaling", {"minReplicas": 1, "maxReplicas": 50})(document)
    pipeline = parse_pipeline(document)
    partitions = pipeline.spec.topic("trips").partitions
    [warning] = pipeline_warnings(pipeline)
    assert warning.path == "spec.steps[0].autoscaling.maxReplicas"
    assert f"capped at {partitions}" in warning.message
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["validate", str(path)]) == 0
    assert (
        "warning: spec.steps[0].autoscaling.maxReplicas: 50 is more than" in capsys.readouterr().err
    )


@pytest.mark.parametrize("command", ["validate", "render"])
def test_cli_prints_the_error_not_a_traceback(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_bytes(b"a: " + b"[" * 5000 + b"]" * 5000)
    assert main([command, str(path)]) == 1
    err = capsys.readouterr().err
    assert "nested deeper than" in err
    assert "Traceback" not in err
