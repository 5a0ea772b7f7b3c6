"""Citi Bike end to end: `flowmill run` serves the local GBFS feed, the pollers ingest its
changing snapshots, and the API's station and region tables, and the Parquet lake read
with the DuckDB query from docs/examples/citibike.md, are checked against values computed
here from the snapshots the pipeline ingested (read back from its topic)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from flowmill.local.redis import EmbeddedRedis
from tests.examples.expected import (
    CITIBIKE_AVAILABILITY_FIELDS,
    citibike_availability,
    citibike_region_minutes,
)
from tests.examples.harness import (
    api,
    close,
    example_copy,
    local_run,
    read_topic,
    source,
    step,
    table_path,
    topic,
    wait_consumed,
    wait_matching,
)
from tests.harness.waiting import wait_for

SNAPSHOTS = 4
PERIOD = 2
# The query docs/examples/citibike.md shows, pointed at this test's lake.
LAKE_QUERY = """
SELECT station_id,
       count(*)                 AS snapshots,
       avg(num_bikes_available) AS avg_bikes,
       min(num_bikes_available) AS min_bikes
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
GROUP BY station_id
ORDER BY station_id
"""


def fast_feed(data: Path) -> None:
    feed_file = data / "citibike" / "feed.json"
    feed = json.loads(feed_file.read_text())
    feed.update(period=PERIOD, snapshots=SNAPSHOTS)
    feed_file.write_text(json.dumps(feed))


def test_citibike_gbfs_tables_and_parquet_lake(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    gbfs_port = free_port()

    def fast(doc: dict[str, Any]) -> None:
        for name in ("station-information", "station-status"):
            poll = source(doc, name)["httpPoll"]
            poll["url"] = poll["url"].replace(":8917/", f":{gbfs_port}/")
            poll["interval"] = "1s"
        step(doc, "lake")["sink"]["parquet"]["flushInterval"] = "2s"

    manifest = example_copy("citibike", tmp_path, fast)
    fast_feed(tmp_path / "data")
    feed = json.loads((tmp_path / "data" / "citibike" / "feed.json").read_text())
    regions = {s["station_id"]: s["region_id"] for s in feed["stations"]}
    lake = tmp_path / "data" / "citibike" / "lake"

    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        assert run.gbfs is not None
        # The feed's clock starts at the first poll; it stops changing after SNAPSHOTS.
        gbfs = run.gbfs
        timeline = wait_for(lambda: gbfs.feed.timeline, 30, "the first poll")
        final = timeline.last_updated(SNAPSHOTS - 1)
        wait_for(lambda: time.time() >= final, 30, "the last snapshot")
        status_topic = topic(run, "station-status")

        def ingested() -> list[dict[str, Any]] | None:
            events = [r["event"] for r in read_topic(run.bootstrap_servers, status_topic)]
            done = sum(e["last_updated"] == final for e in events) == len(regions)
            return events if done else None

        events = wait_for(ingested, 30, "the last snapshot ingested")
        assert len(events) % len(regions) == 0 and len(events) >= 2 * len(regions)
        wait_consumed(run, "region-minute", len(events))

        with api(run) as http:
            # Per-station availability: the last snapshot.
            def availability() -> dict[Any, dict[str, Any]]:
                page = http.get(
                    f"{table_path(run, 'station_availability')}/entries", params={"limit": 100}
                ).json()
                return {e["key"]: e["value"] for e in page["entries"]}

            wait_matching(
                "station availability",
                availability,
                citibike_availability(events, final),
                exact=set(CITIBIKE_AVAILABILITY_FIELDS),
            )

            # Per region and minute.
            def per_region() -> dict[Any, dict[str, Any]]:
                found: dict[Any, dict[str, Any]] = {}
                for region in set(regions.values()):
                    page = http.get(
                        f"{table_path(run, 'region_availability')}/keys/{region}/windows"
                    )
                    if page.status_code == 200:
                        for w in page.json()["windows"]:
                            found[(region, w["start"])] = w["values"]
                return found

            wait_matching(
                "region availability per minute",
                per_region,
                citibike_region_minutes(events, regions),
                exact={"reports", "stations", "min_bikes_available", "empty_station_reports"},
            )

            # Station information, with positions for the map.
            stations = http.get(
                f"{table_path(run, 'stations')}/within",
                params={"min_lat": 40.5, "min_lon": -74.3, "max_lat": 40.9, "max_lon": -73.7},
            ).json()
            assert stations["matched"] == len(regions)

    # stop() flushed the lake's last files; read it the way the docs say.
    relation = duckdb.sql(LAKE_QUERY.format(lake=lake))
    assert relation is not None
    rows = relation.fetchall()
    by_station: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_station[e["station_id"]].append(e["num_bikes_available"])
    assert [r[0] for r in rows] == sorted(by_station)
    for station_id, snapshots, avg_bikes, min_bikes in rows:
        bikes = by_station[station_id]
        assert snapshots == len(bikes)
        assert close(avg_bikes, sum(bikes) / len(bikes))
        assert min_bikes == min(bikes)
    partitions = {p.relative_to(lake).parts[:2] for p in lake.rglob("*.parquet")}
    assert all(d.startswith("date=") and h.startswith("hour=") for d, h in partitions)
