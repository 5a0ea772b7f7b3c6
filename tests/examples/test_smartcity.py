"""Smart City end to end: five generators through `flowmill run`; the latest-state tables
(vehicles, active emergencies, cameras, weather), the average speed per road per minute,
a bounding-box query and a live WebSocket update, all checked through the API against
values computed here from the events in the topics."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import websockets.sync.client
from aiokafka import AIOKafkaProducer

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.run import LocalRun
from tests.examples.harness import (
    api,
    example_copy,
    local_run,
    read_topic,
    row,
    source,
    table_path,
    topic,
    wait_consumed,
    wait_done,
    wait_matching,
)

MINUTE_MS = 60_000
COUNTS = {"vehicles": 120, "gps": 900, "traffic-cameras": 40, "weather": 20, "emergencies": 60}
RATES = {"vehicles": 60, "gps": 400, "traffic-cameras": 20, "weather": 10, "emergencies": 30}
PROBE = {
    "vehicle_id": "probe-01",
    "make": "Tesla",
    "fuel_type": "Electric",
    "latitude": 40.75,
    "longitude": -73.99,
    "speed": 12.5,
    "direction": "North",
    "timestamp": "2030-01-01T00:00:00.000Z",
}


def latest(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Each key's last event (a key's events share a partition, so offset order is theirs)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[str(r["event"][key])] = r["event"]
    return out


def road_minutes(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    acc: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        e = r["event"]
        if e["speed"] >= 0.0:  # the step's filter
            ts = int(datetime.fromisoformat(e["timestamp"]).timestamp() * 1000)
            acc[(e["road"], ts - ts % MINUTE_MS)].append(e)
    return {
        key: {
            "avg_speed": sum(e["speed"] for e in events) / len(events),
            "max_speed": max(e["speed"] for e in events),
            "min_speed": min(e["speed"] for e in events),
            "readings": len(events),
            "vehicles": len({e["vehicle_id"] for e in events}),
        }
        for key, events in acc.items()
    }


def entries(run: LocalRun, table: str) -> dict[str, dict[str, Any]]:
    with api(run) as http:
        page = http.get(f"{table_path(run, table)}/entries", params={"limit": 1000}).json()
    return {e["key"]: e["value"] for e in page["entries"]}


async def produce(bootstrap: str, name: str, key: str, event: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(name, orjson.dumps(event), key=key.encode())
    finally:
        await producer.stop()


def live_update_seen(run: LocalRun) -> dict[str, Any]:
    """Subscribe to the vehicles table over WebSocket, then report a new vehicle and wait
    for its update to arrive on the socket."""
    assert run.api_url is not None
    url = run.api_url.replace("http://", "ws://") + table_path(run, "vehicles") + "/ws"
    with websockets.sync.client.connect(url, open_timeout=10) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ready"
        asyncio.run(produce(run.bootstrap_servers, topic(run, "vehicle-data"), "probe-01", PROBE))
        while True:
            message: dict[str, Any] = orjson.loads(ws.recv(timeout=20))
            if message["type"] == "update" and message["key"] == "probe-01":
                return message


def test_smartcity_tables_map_and_live_updates(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def bounded(doc: dict[str, Any]) -> None:
        for name, count in COUNTS.items():
            source(doc, name)["generator"].update(count=count, rate=RATES[name])

    manifest = example_copy("smartcity", tmp_path, bounded)
    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        wait_done(run, list(COUNTS))
        update = live_update_seen(run)
        assert update["values"]["latitude"] == PROBE["latitude"]

        read = {
            name: read_topic(run.bootstrap_servers, topic(run, name))
            for name in ("vehicle-data", "gps-data", "traffic-data", "weather-data")
        }
        read["emergency-data"] = read_topic(run.bootstrap_servers, topic(run, "emergency-data"))
        assert len(read["vehicle-data"]) == COUNTS["vehicles"] + 1  # and the probe
        assert len(read["gps-data"]) == COUNTS["gps"]
        for step, name in [
            ("vehicle-positions", "vehicle-data"),
            ("road-speed", "gps-data"),
            ("cameras", "traffic-data"),
            ("weather-now", "weather-data"),
            ("active-emergencies", "emergency-data"),
        ]:
            wait_consumed(run, step, len(read[name]))
        assert row(run, "step/road-speed").dead == 0

        vehicles = latest(read["vehicle-data"], "vehicle_id")
        incidents = latest(read["emergency-data"], "incident_id")
        active = {k: e for k, e in incidents.items() if e["status"] != "Resolved"}
        assert 0 < len(active) < len(incidents)  # some incidents were resolved, some not
        expectations = {
            "vehicles": vehicles,
            "emergencies": active,
            "cameras": latest(read["traffic-data"], "camera_id"),
            "weather": latest(read["weather-data"], "district"),
        }
        for table, want in expectations.items():
            wait_matching(
                f"latest-state table {table}",
                lambda table=table: entries(run, table),  # type: ignore[misc]
                want,
                exact=set().union(*(e.keys() for e in want.values())),
            )

        with api(run) as http:
            box = http.get(
                f"{table_path(run, 'vehicles')}/within",
                params={"min_lat": 40.6, "min_lon": -74.1, "max_lat": 40.8, "max_lon": -73.9},
            ).json()
            assert box["matched"] == len(vehicles)
            speeds = table_path(run, "road_speed")

            def served() -> dict[Any, dict[str, Any]]:
                found: dict[Any, dict[str, Any]] = {}
                for road in {e["event"]["road"] for e in read["gps-data"]}:
                    page = http.get(f"{speeds}/keys/{road}/windows")
                    if page.status_code == 200:
                        for w in page.json()["windows"]:
                            found[(road, w["start"])] = w["values"]
                return found

            wait_matching(
                "average speed per road per minute",
                served,
                road_minutes(read["gps-data"]),
                exact={"readings", "vehicles", "max_speed", "min_speed"},
            )
