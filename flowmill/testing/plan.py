"""From a manifest and its test file to what each test runs: the checks that need the
manifest (errors name the test file's field), and each test's own copy of the Pipeline.

A test's copy differs from the manifest in three ways, and only these:
- the Pipeline and every topic get a suffix unique to the test, so tests sharing one
  broker and one Redis never see each other's events, tables or consumer groups;
- its sources are the fixtures: each fixture is a fileReplay source of its events (the
  same worker a manifest's fileReplay runs), writing the topic the replaced source wrote,
  keyed by the same field. Sources without a fixture are left out, so a generator or an
  HTTP poll never runs in a test;
- relative paths that name inputs (a Faust step's code) are made absolute; outputs (a
  Parquet lake's path) stay relative, so they land in the test's scratch folder.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from flowmill.manifest import FieldError, parse_pipeline
from flowmill.spec import Pipeline, StepSpec
from flowmill.testing.spec import Fixture, TestCase, TestFile, TestFileInvalid, fixture_events

LOCAL_GBFS_ANNOTATION = "flowmill.dev/local-gbfs"
"""flowmill run's annotation for serving a GBFS feed: no HTTP poll runs in a test."""
CRASH_FEED_SECONDS = 6.0
"""With crash injection, fixtures are paced to take about this long, so kills land while
events flow."""
_MAX_NAME = 40


@dataclass(frozen=True)
class TableKind:
    step: str
    kind: str
    """window or latest"""


@dataclass
class CasePlan:
    """One test, ready to run: its copy of the Pipeline and the topic names in it."""

    case: TestCase
    index: int
    pipeline: Pipeline
    """The renamed copy."""
    topics: dict[str, str]
    """Manifest topic name -> the copy's."""
    fixtures: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    """(fixture source name in the copy, its events), in the test's order."""

    def topic(self, name: str) -> str:
        return self.topics[name]


def table_kinds(pipeline: Pipeline) -> dict[str, TableKind]:
    """Each serving table, the step writing it, and whether it holds windows or latest."""
    return {
        table: TableKind(step.name, "window" if step.window is not None else "latest")
        for step, table in pipeline.tables()
    }


def dead_letter_topics(pipeline: Pipeline) -> set[str]:
    return {t for s in pipeline.spec.steps if (t := s.dead_letter_topic()) is not None}


def check(pipeline: Pipeline, tests: TestFile, test_path: Path) -> None:
    """Every reference of the test file resolves in the Pipeline and every fixture reads;
    TestFileInvalid lists each problem with its field."""
    errors: list[FieldError] = []
    spec = pipeline.spec
    sources = {s.name for s in spec.sources}
    topics = {t.name: t for t in spec.topics}
    tables = table_kinds(pipeline)
    dead = dead_letter_topics(pipeline)
    written = {t for s in spec.steps for t in s.output_topics()} - dead
    for i, case in enumerate(tests.tests):
        at = f"tests[{i}]"
        for j, fixture in enumerate(case.fixtures):
            where = f"{at}.fixtures[{j}]"
            if fixture.source is not None and fixture.source not in sources:
                errors.append(
                    FieldError(
                        f"{where}.source",
                        f"no source {fixture.source!r} in Pipeline {pipeline.name} "
                        f"(sources: {', '.join(sorted(sources)) or 'none'})",
                    )
                )
            if fixture.topic is not None and fixture.topic not in topics:
                errors.append(FieldError(f"{where}.topic", _unknown_topic(fixture.topic, topics)))
            try:
                fixture_events(fixture, test_path.parent, where)
            except TestFileInvalid as err:
                errors += err.errors
        for name, expected in case.expect.tables.items():
            where = f"{at}.expect.tables.{name}"
            kind = tables.get(name)
            if kind is None:
                errors.append(
                    FieldError(
                        where,
                        f"no table {name!r} in Pipeline {pipeline.name} "
                        f"(tables: {', '.join(sorted(tables)) or 'none'})",
                    )
                )
            elif expected.windows is not None and kind.kind != "window":
                errors.append(
                    FieldError(
                        f"{where}.windows",
                        f"{name} is a latest-state table (step {kind.step}): use entries",
                    )
                )
            elif expected.entries is not None and kind.kind != "latest":
                errors.append(
                    FieldError(
                        f"{where}.entries",
                        f"{name} is a window table (step {kind.step}): use windows",
                    )
                )
        for name in case.expect.dead_letters:
            if name not in dead:
                errors.append(
                    FieldError(
                        f"{at}.expect.deadLetters.{name}",
                        f"{name!r} is no step's dead-letter topic "
                        f"(dead-letter topics: {', '.join(sorted(dead)) or 'none'})",
                    )
                )
        for name, expected_topic in case.expect.topics.items():
            where = f"{at}.expect.topics.{name}"
            if name not in written:
                errors.append(
                    FieldError(
                        where,
                        f"{name!r} is no step's output topic "
                        f"(output topics: {', '.join(sorted(written)) or 'none'})",
                    )
                )
            elif expected_topic.order == "exact" and topics[name].partitions != 1:
                errors.append(
                    FieldError(
                        f"{where}.order",
                        f"exact order needs a topic of one partition; {name} has "
                        f"{topics[name].partitions} (use perKey: Kafka orders each key)",
                    )
                )
    if errors:
        raise TestFileInvalid(str(test_path), errors)


def _unknown_topic(name: str, topics: dict[str, Any]) -> str:
    return f"no topic {name!r} declared (topics: {', '.join(sorted(topics))})"


def plan_case(
    pipeline: Pipeline,
    manifest_dir: Path,
    case: TestCase,
    index: int,
    test_path: Path,
    scratch: Path,
    crash: bool = False,
) -> tuple[CasePlan, Path]:
    """The test's copy of the Pipeline written under `scratch` (with its fixture files),
    and the path of that manifest."""
    suffix = f"t{index}{secrets.token_hex(2)}"
    doc = pipeline.to_manifest()
    doc["metadata"]["name"] = f"{pipeline.name[: _MAX_NAME - len(suffix) - 1]}-{suffix}"
    doc["metadata"].get("annotations", {}).pop(LOCAL_GBFS_ANNOTATION, None)
    renames = {t.name: f"{t.name}-{suffix}" for t in pipeline.spec.topics}
    spec = doc["spec"]
    for topic in spec["topics"]:
        topic["name"] = renames[topic["name"]]
    for step_doc, step in zip(spec["steps"], pipeline.spec.steps, strict=True):
        _rename_step(step_doc, step, renames, manifest_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    fixtures: list[tuple[str, list[dict[str, Any]]]] = []
    spec["sources"] = []
    for j, fixture in enumerate(case.fixtures):
        events = fixture_events(fixture, test_path.parent, f"tests[{index}].fixtures[{j}]")
        name, topic, key = _fixture_target(pipeline, fixture, j)
        path = scratch / f"fixture-{j}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        replay: dict[str, Any] = {"path": str(path), "format": "jsonl"}
        if crash:
            replay["rate"] = max(1.0, len(events) / CRASH_FEED_SECONDS)
        source: dict[str, Any] = {"name": name, "to": renames[topic], "fileReplay": replay}
        if key is not None:
            source["key"] = key
        spec["sources"].append(source)
        fixtures.append((name, events))
    manifest = scratch / f"{pipeline.name}.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    copy = parse_pipeline(doc, str(manifest))
    return CasePlan(case, index, copy, renames, fixtures), manifest


def _fixture_target(
    pipeline: Pipeline, fixture: Fixture, index: int
) -> tuple[str, str, str | None]:
    """(source name, manifest topic, key field) of a fixture."""
    if fixture.source is not None:
        source = next(s for s in pipeline.spec.sources if s.name == fixture.source)
        return source.name, source.to, source.key
    assert fixture.topic is not None
    taken = {s.name for s in pipeline.spec.sources}
    name = f"fixture-{index}"
    while name in taken:
        name += "x"
    return name, fixture.topic, fixture.key


def _rename_step(
    doc: dict[str, Any], step: StepSpec, renames: dict[str, str], manifest_dir: Path
) -> None:
    """Every topic a step names, renamed; parse_pipeline refuses the copy if one is missed
    (a step may only name declared topics)."""
    doc["from"] = renames[step.from_]
    if step.dead_letter:
        doc["deadLetter"] = renames[step.dead_letter]
    if step.validate_ is not None and step.validate_.dead_letter:
        doc["validate"]["deadLetter"] = renames[step.validate_.dead_letter]
    if step.correlate is not None:
        doc["correlate"]["with"] = renames[step.correlate.with_]
    if step.lookup is not None and step.lookup.topic is not None:
        doc["lookup"]["topic"] = renames[step.lookup.topic]
    if step.sink is not None and step.sink.kafka is not None:
        doc["sink"]["kafka"]["topic"] = renames[step.sink.kafka.topic]
    if step.faust is not None:
        faust = doc["faust"]
        faust["outputs"] = {code: renames[t] for code, t in step.faust.outputs.items()}
        code = step.faust.code
        if code is not None and code.path is not None:
            faust["code"]["path"] = str((manifest_dir / code.path).resolve())
