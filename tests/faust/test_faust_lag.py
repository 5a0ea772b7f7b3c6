"""The Faust step's lag series (what its autoscaler reads) counts what the agent has not
processed, and stays current while the agent keeps the event loop busy.

A small agent holds on one event, busy (blocking the loop in 0.2 s slices) until the test
lets it go. Faust has long fetched the partition's later events into its stream buffer,
so the consumer's position is the partition's end (a lag of 0 by the old measure); the
lag must be every event from the held one on, which the test knows from what it
produced, and equal what the broker says (end offsets, the group's committed offsets).
Another partition is written in a transaction, as an exactly-once step writes: once its
events are processed its lag is 0, though its end is one past the group's commit (the
transaction's marker).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from tests.faust.harness import faust_manifest, metrics, worker
from tests.harness.waiting import wait_for
from tests.workers.harness import produce

GATED_APP = """\
import asyncio
import time
from pathlib import Path

import faust

app = faust.App("gated", value_serializer="json")
events = app.topic("events", value_serializer="json")


@app.agent(events)
async def work(stream):
    async for value in stream:
        gate = value.get("hold")
        while gate and Path(gate).exists():
            time.sleep(0.2)  # busy: the loop gets a moment only between slices
            await asyncio.sleep(0)
"""
PARTITIONS = 3  # faust_manifest's
BEFORE, AFTER, OTHER, IN_TRANSACTION = 10, 40, 20, 5


def reported_lag(port: int, group: str) -> dict[int, int]:
    """flowmill_consumer_lag of the step's group by partition, as /metrics serves it."""
    found: dict[int, int] = {}
    for family in text_string_to_metric_families(metrics(port)):
        if family.name == "flowmill_consumer_lag":
            for sample in family.samples:
                if sample.labels.get("group") == group:
                    found[int(sample.labels["partition"])] = int(sample.value)
    return found


def broker_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """End offset minus the group's committed offset (the beginning if none), by partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flowmill-tests")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="flowmill-tests")
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = admin.list_consumer_group_offsets(group)
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
    finally:
        admin.close()
        consumer.close()
    return {
        tp.partition: ends[tp] - (committed[tp].offset if tp in committed else starts[tp])
        for tp in tps
    }


async def produce_in_a_transaction(bootstrap: str, topic: str, partition: int, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(n):
                await producer.send(topic, orjson.dumps({"n": i}), partition=partition)
    finally:
        await producer.stop()


def test_lag_counts_what_the_agent_has_not_processed(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "gated.py").write_text(GATED_APP)
    manifest, doc = faust_manifest(
        tmp_path,
        kafka_broker,
        app="gated:app",
        agent="work",
        outputs={},
        tables=[],
        code={"path": str(code)},
        # The hold is a stall by design: the stall watch (test_faust_stall.py) must not
        # end it.
        stallTimeout="1h",
    )
    topic = doc["spec"]["topics"][0]["name"]
    group = f"flowmill.{doc['metadata']['name']}.rules"
    bootstrap = kafka_broker.bootstrap_servers
    gate = tmp_path / "hold"
    gate.touch()
    port = free_port()
    log = tmp_path / "worker.log"
    proc = worker(manifest, kafka_broker, port, log, code=code)

    def send(partition: int, values: list[dict[str, object]]) -> None:
        asyncio.run(produce(bootstrap, topic, values, partition=partition))

    def settled(partition_0: int, what: str) -> None:
        # At the broker, partition 2 ends one past the group's commit: the marker.
        reported, offsets = {0: partition_0, 1: 0, 2: 0}, {0: partition_0, 1: 0, 2: 1}
        wait_for(
            lambda: (
                reported_lag(port, group) == reported
                and broker_lag(bootstrap, group, topic) == offsets
            ),
            60,
            f"{what}: lag {reported} reported, end - committed {offsets} at the broker",
        )

    try:
        # Partitions 1 and 2 first, all processed, so that nothing of theirs waits behind
        # the hold (one agent takes every partition's events in turn).
        send(1, [{"n": n} for n in range(OTHER)])
        asyncio.run(produce_in_a_transaction(bootstrap, topic, 2, IN_TRANSACTION))
        settled(0, "partitions 1 and 2 processed")
        send(0, [*({"n": n} for n in range(BEFORE)), {"hold": str(gate)}])
        send(0, [{"n": n} for n in range(AFTER)])
        # The held event and all after it are still to do; Faust committed the ones before.
        # (The series got there while the agent was busy.)
        settled(1 + AFTER, "agent held")
        gate.unlink()
        settled(0, "agent let go")
        owned = f'flowmill_partitions_assigned{{pipeline="{doc["metadata"]["name"]}",step="rules"}}'
        assert f"{owned} 3.0" in metrics(port)
    except (TimeoutError, AssertionError) as err:
        raise AssertionError(f"{err}\nworker log:\n{log.read_text()[-3000:]}") from None
    finally:
        gate.unlink(missing_ok=True)
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
