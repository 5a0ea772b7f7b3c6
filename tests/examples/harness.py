"""Helpers for the example tests: isolated copies of the example manifests, a LocalRun on
the session's broker and Redis, reading topics, and waiting with a bound.

Every example test runs its own copy of an example, with the pipeline and its topics
renamed by a unique suffix, so tests sharing one broker and one Redis never see each
other's events, tables or consumer groups, and a rerun in the same session starts clean.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.run import LocalRun, RowStatus
from tests.harness.waiting import unique, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "k8s" / "examples"
# The suffix of every renamed copy: unique(RENAME_PREFIX).
RENAME_PREFIX = "run"


def rename_topics(doc: dict[str, Any], suffix: str) -> None:
    """Give the Pipeline and every topic it names a suffix (in place)."""
    spec = doc["spec"]
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-{suffix}"

    def renamed(name: str) -> str:
        return f"{name}-{suffix}"

    for topic in spec["topics"]:
        topic["name"] = renamed(topic["name"])
    for source in spec.get("sources", []):
        source["to"] = renamed(source["to"])
    for step in spec.get("steps", []):
        step["from"] = renamed(step["from"])
        if "deadLetter" in step:
            step["deadLetter"] = renamed(step["deadLetter"])
        if "deadLetter" in step.get("validate", {}):
            step["validate"]["deadLetter"] = renamed(step["validate"]["deadLetter"])
        if "correlate" in step:
            step["correlate"]["with"] = renamed(step["correlate"]["with"])
        if "kafka" in step.get("sink", {}):
            step["sink"]["kafka"]["topic"] = renamed(step["sink"]["kafka"]["topic"])
        if "faust" in step:
            outputs = step["faust"].get("outputs", {})
            step["faust"]["outputs"] = {code: renamed(topic) for code, topic in outputs.items()}


def example_copy(
    name: str, into: Path, edit: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """k8s/examples/{name}.yaml and its data folder copied under `into`, renamed (see the
    module docstring) and optionally edited (faster rates, a `count` for generators)."""
    doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    rename_topics(doc, unique(RENAME_PREFIX))
    if edit is not None:
        edit(doc)
    data = EXAMPLES / "data" / name
    if data.is_dir():
        shutil.copytree(data, into / "data" / name, ignore=shutil.ignore_patterns("lake"))
    path = into / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def source(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["spec"]["sources"] if s["name"] == name)


def topic(doc_or_run: dict[str, Any] | LocalRun, base: str) -> str:
    """The renamed topic whose original name was `base`."""
    names = (
        [t.name for t in doc_or_run.pipeline.spec.topics]
        if isinstance(doc_or_run, LocalRun)
        else [t["name"] for t in doc_or_run["spec"]["topics"]]
    )
    # Renamed names end in the suffix unique(RENAME_PREFIX) made: "-run-<hex>".
    return next(n for n in names if n.rsplit("-", 2)[:2] == [base, RENAME_PREFIX])


@contextmanager
def local_run(
    manifest: Path, kafka: EmbeddedKafka, redis: EmbeddedRedis, data_dir: Path
) -> Iterator[LocalRun]:
    """A LocalRun of `manifest` on the session's broker and Redis, API on a free port."""
    if not redis.running:  # another module may have stopped it to test an outage
        redis.start()
    run = LocalRun(
        manifest,
        bootstrap_servers=kafka.bootstrap_servers,
        redis_url=redis.url,
        api_port=0,
        data_dir=data_dir,
    )
    with run:
        run.wait_ready(timeout=60)
        yield run
    assert not run.child_pids(), "children left after stop()"


def row(run: LocalRun, label: str) -> RowStatus:
    return next(r for r in run.status().rows if r.label == label)


def wait_done(run: LocalRun, sources: list[str], timeout: float = 60.0) -> None:
    """Until every named source says it finished (its file or `count` is exhausted)."""
    wait_for(
        lambda: all(row(run, f"source/{s}").state == "done" for s in sources),
        timeout,
        f"sources {sources} finished",
    )


def wait_consumed(run: LocalRun, step: str, count: int, timeout: float = 60.0) -> None:
    """Until the step's worker has consumed `count` events (its events_in counter)."""
    wait_for(
        lambda: (row(run, f"step/{step}").events_in or 0) >= count,
        timeout,
        f"step {step} consumed {count}",
    )


def read_topic(bootstrap: str, name: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every committed record of a topic: partition, offset, timestamp and the decoded
    event, in partition then offset order."""
    return asyncio.run(_read_topic(bootstrap, name, timeout))


async def _read_topic(bootstrap: str, name: str, timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {name}: partitions {remaining} not read")
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    out.append(
                        {
                            "partition": tp.partition,
                            "offset": r.offset,
                            "timestamp": r.timestamp,
                            "event": orjson.loads(r.value) if r.value is not None else None,
                        }
                    )
            for tp in list(remaining):
                # The end offset counts transaction markers, which are never returned.
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    return out


def api(run: LocalRun) -> httpx.Client:
    assert run.api_url is not None
    return httpx.Client(base_url=run.api_url, timeout=10, trust_env=False)


def table_path(run: LocalRun, table: str) -> str:
    return f"/pipelines/{run.pipeline.name}/tables/{table}"


def key_path(key: str) -> str:
    return quote(key, safe="")


def close(actual: float, expected: float) -> bool:
    """Equal to 1e-9 relative (sums and averages go through floating point in Redis)."""
    return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)


def mismatches(
    actual: dict[Any, dict[str, Any]], expected: dict[Any, dict[str, Any]], exact: set[str]
) -> list[str]:
    """What differs between two {key: {aggregate: value}} maps: fields in `exact` must be
    equal, the others equal to 1e-9 relative."""
    problems = []
    for key in sorted(set(actual) | set(expected), key=str):
        if key not in actual:
            problems.append(f"{key}: missing from the API")
            continue
        if key not in expected:
            problems.append(f"{key}: served but not expected: {actual[key]}")
            continue
        for name, want in expected[key].items():
            got = actual[key].get(name)
            ok = got == want if name in exact else got is not None and close(got, want)
            if not ok:
                problems.append(f"{key}.{name}: API {got!r}, expected {want!r}")
    return problems


def wait_matching(
    what: str,
    fetch: Callable[[], dict[Any, dict[str, Any]]],
    expected: dict[Any, dict[str, Any]],
    exact: set[str],
    timeout: float = 60.0,
) -> dict[Any, dict[str, Any]]:
    """Fetch from the API until it matches `expected` (see mismatches); on timeout the
    error lists what still differs."""
    deadline = time.monotonic() + timeout
    while True:
        actual = fetch()
        problems = mismatches(actual, expected, exact)
        if not problems:
            return actual
        if time.monotonic() > deadline:
            shown = "\n  ".join(problems[:20])
            raise AssertionError(
                f"{what}: {len(problems)} difference(s) after {timeout:.0f}s:\n  {shown}"
            )
        time.sleep(0.5)


def step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["spec"]["steps"] if s["name"] == name)
