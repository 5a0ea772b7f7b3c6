"""The lag gauge the autoscalers read: per partition the worker owns, labelled with its
consumer group, and gone for partitions a rebalance took away (a stale value would count
on as lag and keep the step from ever scaling down)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec import consumer_group
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce

PARTITIONS = 4


def lag_samples(runner: StepRunner) -> dict[int, dict[str, str]]:
    """The worker's flowmill_consumer_lag samples by partition, as /metrics shows them."""
    return {
        int(sample.labels["partition"]): sample.labels
        for family in runner.metrics.registry.collect()
        if family.name == "flowmill_consumer_lag"
        for sample in family.samples
    }


def test_a_report_replaces_the_partitions_reported_before() -> None:
    """What a worker reports is its assignment at the report, not every partition it ever
    held: one that went away in between (a rebalance during a position lookup) is gone."""
    metrics = WorkerMetrics("p", "s")
    metrics.report_lag({("t", 0): 5, ("t", 1): 7, ("t", 2): 1})
    metrics.report_lag({("t", 1): 3})
    reported = {
        (s.labels["partition"], s.value)
        for family in metrics.registry.collect()
        if family.name == "flowmill_consumer_lag"
        for s in family.samples
    }
    assert reported == {("1", 3.0)}
    metrics.forget_lag("t", 1)
    metrics.report_lag({("t", 2): 4})
    assert {s.labels["partition"] for s in metrics.consumer_lag.collect()[0].samples} == {"2"}


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_rebalance_drops_the_lag_of_partitions_a_worker_lost(
    kafka_broker: EmbeddedKafka,
) -> None:
    name = unique("lag")
    src = f"{name}-in"
    p = pipeline(
        name,
        [{"name": src, "partitions": PARTITIONS}],
        [{"name": "pass", "from": src, "filter": "id >= 0"}],
    )
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    await produce(bootstrap, src, [{"id": i} for i in range(400)], key_field="id")

    first = StepRunner(p, "pass", WorkerConfig(bootstrap, None))
    second = StepRunner(p, "pass", WorkerConfig(bootstrap, None))
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    await first.start()
    first_task = asyncio.create_task(first.run(stop_first))
    try:
        await wait_until(
            lambda: set(lag_samples(first)) == set(range(PARTITIONS)),
            "the first worker to report lag for every partition",
        )
        group = consumer_group(name, "pass")
        assert {s["group"] for s in lag_samples(first).values()} == {group}
        assert {s["topic"] for s in lag_samples(first).values()} == {src}

        await second.start()
        second_task = asyncio.create_task(second.run(stop_second))
        try:
            await wait_until(
                lambda: (
                    bool(second.consumer and second.consumer.assignment())
                    and bool(lag_samples(second))
                ),
                "the second worker to own partitions and report their lag",
            )
            # Each worker reports exactly the partitions it owns now, together all of them
            # once: nothing the first worker lost lingers in its registry.
            await wait_until(
                lambda: (
                    set(lag_samples(first)).isdisjoint(lag_samples(second))
                    and set(lag_samples(first)) | set(lag_samples(second)) == set(range(PARTITIONS))
                ),
                "the lag reports to follow the new assignment",
            )
            assert first.consumer is not None
            owned = {tp.partition for tp in first.consumer.assignment()}
            assert set(lag_samples(first)) == owned
            assert 0 < len(owned) < PARTITIONS
        finally:
            stop_second.set()
            await second_task
            await second.stop()
    finally:
        stop_first.set()
        await first_task
        await first.stop()
