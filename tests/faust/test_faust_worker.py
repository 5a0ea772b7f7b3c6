"""The Faust step's worker on its own: it runs the user's agent on the step's topics with
the same probes and metrics as any worker, and a spec its code does not fit stops it at
once with the field named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from tests.examples.harness import read_topic
from tests.faust.harness import expected_flags, faust_manifest, metrics, valid_trips, worker
from tests.harness.waiting import wait_for


async def _produce(bootstrap: str, topic: str, events: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, orjson.dumps(event), key=str(event["rider_id"]).encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_agent_runs_with_the_workers_probes_and_metrics(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    manifest, doc = faust_manifest(tmp_path, kafka_broker)
    source, sink = (t["name"] for t in doc["spec"]["topics"])
    trips = valid_trips()
    expected = expected_flags(trips)
    assert len(expected) > 10
    port = free_port()
    proc = worker(manifest, kafka_broker, port, tmp_path / "worker.log")
    try:
        asyncio.run(_produce(kafka_broker.bootstrap_servers, source, trips))
        wait_for(
            lambda: (
                f'flowmill_events_in_total{{pipeline="{doc["metadata"]["name"]}",step="rules"}} '
                f"{len(trips)}.0" in metrics(port)
            ),
            60,
            "the worker consumed every trip",
        )
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False)
        assert ready.status_code == 200 and ready.json()["ready"], ready.text
        group = f"flowmill.{doc['metadata']['name']}.rules"
        wait_for(
            lambda: metrics(port).count(f'flowmill_consumer_lag{{group="{group}"') == 3,
            20,
            "a lag series per input partition",
        )
        text = metrics(port)
        assert "faust_messages_received_total" in text  # Faust's own monitor
        flags = [r["event"] for r in read_topic(kafka_broker.bootstrap_servers, sink)]
        assert sorted((f["rider_id"], f["trip_id"], f["rule"]) for f in flags) == sorted(expected)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def _fails_fast(tmp_path: Path, kafka: EmbeddedKafka, **faust: object) -> str:
    manifest, _ = faust_manifest(tmp_path, kafka, **faust)
    proc = worker(manifest, kafka, free_port(), tmp_path / "worker.log")
    assert proc.wait(timeout=30) == 1
    return (tmp_path / "worker.log").read_text()


def test_unknown_agent_stops_the_worker_naming_the_field(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    log = _fails_fast(tmp_path, kafka_broker, agent="detekt")
    assert (
        "spec.steps[0].faust.agent: 'detekt' is not an agent of the app "
        "(the app's agents: fraud_rules.detect)" in log
    )


def test_undeclared_table_and_topic_stop_the_worker(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    (tmp_path / "t").mkdir()
    log = _fails_fast(tmp_path / "t", kafka_broker, tables=[])
    assert "spec.steps[0].faust.tables: the app keeps Table(s) rider-trips" in log
    (tmp_path / "o").mkdir()
    log = _fails_fast(tmp_path / "o", kafka_broker, outputs={})
    assert "spec.steps[0].faust.outputs: the app uses topic 'fraud-flags'" in log


def test_a_module_that_is_not_there_names_the_app(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    log = _fails_fast(tmp_path, kafka_broker, app="no_such_rules:app")
    assert "spec.steps[0].faust.app: cannot import no_such_rules" in log
