"""Helpers shared by the source tests (this module holds no tests): Pipelines with
sources, a source runner in this process, and reading a topic back independently."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline
from flowmill_workers.runtime.source_runner import SourceConfig, SourceRunner
from tests.workers.harness import consume_all

__all__ = ["RunningSource", "consume", "metric", "running", "source_pipeline"]


def source_pipeline(
    name: str, topics: list[tuple[str, int]], sources: list[dict[str, Any]]
) -> Pipeline:
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": {
                "topics": [{"name": t, "partitions": n} for t, n in topics],
                "sources": sources,
            },
        }
    )


@dataclass
class RunningSource:
    runner: SourceRunner
    task: asyncio.Task[None]

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.runner, name, **labels)

    async def until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait for `condition`, failing early if the runner died."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.task.done():
                self.task.result()
                raise AssertionError("the source runner stopped before the condition held")
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout}s; ready={self.runner.ready()}")
            await asyncio.sleep(0.02)

    def written(self) -> float:
        return self.metric("flowmill_events_out_total")


def metric(runner: SourceRunner, name: str, **labels: str) -> float:
    value = runner.metrics.registry.get_sample_value(
        name, {"pipeline": runner.pipeline.name, "step": runner.spec.name, **labels}
    )
    return value or 0.0


@asynccontextmanager
async def running(
    pipeline: Pipeline, source: str, bootstrap: str, **config: Any
) -> AsyncIterator[RunningSource]:
    """A source runner in this process; stopped (gracefully) on exit."""
    runner = SourceRunner(pipeline, source, SourceConfig(bootstrap, **config))
    await runner.start()
    stop = asyncio.Event()
    handle = RunningSource(runner, asyncio.create_task(runner.run(stop)))
    try:
        yield handle
    finally:
        stop.set()
        try:
            await asyncio.wait_for(handle.task, 30)
        finally:
            await runner.stop()


@dataclass(frozen=True)
class Read:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict[str, bytes]

    @property
    def event(self) -> Any:
        assert self.value is not None
        return json.loads(self.value)


async def consume(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 0.5
) -> list[Read]:
    """Every committed record of `topic` in (partition, offset) order, once `expected`
    arrived and `settle` more seconds showed nothing else (so "exactly N" means it)."""
    records = await consume_all(bootstrap, topic, expected, timeout, settle)
    found = [
        Read(r.partition, r.offset, r.key, r.value, r.timestamp, dict(r.headers or ()))
        for r in records
    ]
    return sorted(found, key=lambda r: (r.partition, r.offset))
