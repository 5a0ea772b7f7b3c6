"""StreamPulse end to end: replay the example's trips through `flowmill run` on the real
broker and Redis, crash the window step's worker halfway, and check every region's
1-minute windows served by the API against values computed here from the same events.

The expected values (tests/examples/expected.py) replay the step's event-time rules in
plain Python."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.examples.expected import streampulse_windows
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
from tests.harness.waiting import wait_for


def test_streampulse_windows_per_region_survive_a_worker_crash(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def faster(doc: dict[str, Any]) -> None:
        source(doc, "replay")["fileReplay"]["rate"] = 500

    manifest = example_copy("streampulse", tmp_path, faster)
    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        # Crash the window step mid-stream: the run restarts it and, since the Redis sink
        # checkpoints with the data, the final windows are still exact.
        wait_consumed(run, "by-region", 300)
        os.kill(row(run, "step/by-region").pid or 0, signal.SIGKILL)
        wait_for(lambda: row(run, "step/by-region").restarts >= 1, 30, "by-region restarted")
        wait_done(run, ["replay"])
        records = read_topic(run.bootstrap_servers, topic(run, "trip-events"))
        assert len(records) == 2000
        expected, dead = streampulse_windows(records)
        # 8 invalid rows and 15 late ones, by construction of the data.
        assert len(dead) == 23 and sum(str(t).startswith("late_") for t in dead) == 15

        base = table_path(run, "region_metrics")
        regions = sorted({region for region, _ in expected})
        with api(run) as http:

            def served() -> dict[Any, dict[str, Any]]:
                found: dict[Any, dict[str, Any]] = {}
                for region in regions:
                    page = http.get(f"{base}/keys/{region}/windows", params={"limit": 1000})
                    if page.status_code == 404:
                        continue
                    page.raise_for_status()
                    for w in page.json()["windows"]:
                        found[(region, w["start"])] = w["values"]
                return found

            wait_matching("region windows", served, expected, exact={"trips"})

            # The seed's /metrics/region/{id}?window=1m: the region's newest window.
            region = regions[0]
            current = http.get(f"{base}/keys/{region}/windows/current").json()
            newest = max(start for r, start in expected if r == region)
            assert current["start"] == newest
            assert current["values"]["trips"] == expected[(region, newest)]["trips"]
            top = http.get(f"{base}/windows/{newest}/top", params={"by": "revenue"}).json()
            assert top["keys"], top
            assert http.get("/dashboard").status_code == 200

        dlq = read_topic(run.bootstrap_servers, topic(run, "trip-events-dlq"))
        # Dead letters are at-least-once: the crash may have repeated some, never lost one.
        assert {d["event"].get("trip_id") for d in dlq} == set(dead)
        assert any("restarted step/by-region" in e for e in run.events)
