"""The dashboard's health view in headless Chromium (through WebDriver: Debian's chromium
and chromedriver) against a running `flowmill run`: the graph has every
source, topic, step and sink of the manifest; rates move; a dead letter produced here on
purpose shows with its reason and origin; a killed worker shows its restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.examples.harness import local_run, row
from tests.harness.waiting import unique, wait_for

SNAPSHOT = "return window.flowmillHealth ? window.flowmillHealth.snapshot() : null"


@contextmanager
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, (
        "the health view test needs Debian's chromium and chromium-driver packages: "
        "run scripts/provision.sh chromium"
    )
    options = Options()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1500,1000",
    ):
        options.add_argument(arg)
    # The driver's path is given: Selenium Manager, which would download one, never runs.
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    chrome = webdriver.Chrome(options=options, service=service)
    try:
        yield chrome
    finally:
        chrome.quit()


def produce(servers: str, topic_name: str, key: bytes, value: bytes) -> tuple[int, int]:
    """Send one record; its (partition, offset)."""

    async def send() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic_name, value, key=key)
            return meta.partition, meta.offset
        finally:
            await producer.stop()

    return asyncio.run(send())


def manifest(into: Path) -> tuple[Path, str, str]:
    """A small Pipeline of its own (the examples change): generated trips, a schema that
    refuses negative fares into a dead-letter topic, per-region counts served by Redis."""
    name = unique("health")
    trips, dlq = f"{name}-trips", f"{name}-dlq"
    doc = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [{"name": trips, "partitions": 2}, {"name": dlq}],
            "sources": [
                {
                    "name": "trips",
                    # Forever at 40/s: the rates keep moving while the test watches.
                    "generator": {
                        "rate": 40,
                        "fields": {
                            "trip_id": {"type": "uuid"},
                            "region_id": {"type": "int", "min": 1, "max": 4},
                            "fare": {"type": "float", "min": 1, "max": 30, "precision": 2},
                        },
                    },
                    "to": trips,
                    "key": "region_id",
                }
            ],
            "steps": [
                {
                    "name": "by-region",
                    "from": trips,
                    "deadLetter": dlq,
                    "validate": {
                        "schema": {
                            "type": "object",
                            "required": ["trip_id", "region_id", "fare"],
                            "properties": {"fare": {"type": "number", "minimum": 0}},
                        }
                    },
                    "keyBy": "region_id",
                    "window": {"type": "tumbling", "size": "1m"},
                    "aggregate": {"trips": "count", "revenue": {"sum": "fare"}},
                    "sink": {"redis": {"table": "regions"}},
                }
            ],
        },
    }
    path = into / "health.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, trips, dlq


def test_health_view_follows_a_running_pipeline(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path, trips, dlq = manifest(tmp_path)
    with (
        local_run(path, kafka_broker, redis_server, tmp_path / "run") as run,
        chromium(tmp_path) as chrome,
    ):
        # The manifest's parts, written out by hand rather than asked of flowmill.spec.graph.
        nodes = {
            "source/trips",
            f"topic/{trips}",
            f"topic/{dlq}",
            "step/by-region",
            "sink/by-region/redis",
        }
        edges = {
            ("source/trips", f"topic/{trips}"),
            (f"topic/{trips}", "step/by-region"),
            ("step/by-region", f"topic/{dlq}"),
            ("step/by-region", "sink/by-region/redis"),
        }
        assert run.health_url is not None
        chrome.get(run.health_url)

        def shown() -> dict[str, Any] | None:
            snap: dict[str, Any] | None = chrome.execute_script(SNAPSHOT)
            return snap if snap and snap["polls"] and snap["error"] is None else None

        first = wait_for(shown, 30, "the health view's first poll")
        assert set(first["nodes"]) == nodes
        assert {tuple(e) for e in first["edges"]} == edges

        def moving() -> dict[str, Any] | None:
            snap = shown()
            if not snap:
                return None
            step, src = snap["nodes"]["step/by-region"], snap["nodes"]["source/trips"]
            ok = (step["rate_in"] or 0) > 0 and (src["rate_out"] or 0) > 0
            return snap if ok and step["state"] == "ready" else None

        before = wait_for(moving, 30, "rates above zero on the source and the step")
        time.sleep(2)  # two more polls
        after = wait_for(moving, 10, "rates still above zero")
        # The events counted so far (text lines) moved on between the two looks.
        assert after["nodes"]["source/trips"]["text"] != before["nodes"]["source/trips"]["text"]
        assert after["nodes"][f"topic/{trips}"]["text"] != before["nodes"][f"topic/{trips}"]["text"]

        # A dead letter on purpose: a trip with a negative fare, which the schema refuses.
        bad = {"trip_id": "on-purpose", "region_id": 1, "fare": -5}
        partition, offset = produce(run.bootstrap_servers, trips, b"1", orjson.dumps(bad))
        origin = f"{trips}[{partition}]@{offset}"

        def dead_letter() -> list[str] | None:
            snap = shown()
            rows = snap["deadLetters"] if snap else []
            # columns: time, step, topic, reason, event
            return next((r for r in rows if r[4] == origin), None)

        found = wait_for(dead_letter, 30, f"the dead letter of {origin} in the view")
        assert found[1] == "by-region" and found[2].startswith(f"{dlq}[")
        assert "fare" in found[3] and "minimum" in found[3], found[3]
        chrome.save_screenshot(str(tmp_path / "health-dead-letter.png"))

        # A killed worker: the supervisor restarts it and the view counts the restart.
        pid = row(run, "step/by-region").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            snap = shown()
            node = snap["nodes"]["step/by-region"] if snap else None
            return snap if node and node["restarts"] == 1 and node["state"] == "ready" else None

        snap = wait_for(restarted, 60, "the step's restart in the view, then ready again")
        assert "restarts 1" in " ".join(snap["nodes"]["step/by-region"]["text"])
        assert snap["nodes"]["source/trips"]["restarts"] == 0
        chrome.save_screenshot(str(tmp_path / "health-restart.png"))
