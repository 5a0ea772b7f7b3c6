"""Trip processing end to end: replay trip_start.csv and trip_end.csv through `flowmill
run`, join them by trip_id, and check the daily KPIs and the trip table served by the API
against values computed here from the two CSV files with plain Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.examples.expected import completed_trips, daily_kpis
from tests.examples.harness import (
    api,
    close,
    example_copy,
    local_run,
    source,
    table_path,
    wait_consumed,
    wait_done,
    wait_matching,
)
from tests.harness.waiting import wait_for


def test_trips_join_and_daily_kpis(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def faster(doc: dict[str, Any]) -> None:
        for name in ("trip-start", "trip-end"):
            source(doc, name)["fileReplay"]["rate"] = 1000

    manifest = example_copy("trips", tmp_path, faster)
    trips = completed_trips(tmp_path / "data" / "trips")
    assert len(trips) == 970  # 1,000 trips, 30 never end; 10 ends without a start
    expected = daily_kpis(trips)

    with local_run(manifest, kafka_broker, redis_server, tmp_path / "run") as run:
        wait_done(run, ["trip-start", "trip-end"])
        wait_consumed(run, "daily-kpis", len(trips))
        base = table_path(run, "daily_kpis")
        with api(run) as http:

            def served() -> dict[Any, dict[str, Any]]:
                page = http.get(f"{base}/keys/all/windows")
                if page.status_code != 200:
                    return {}
                return {("all", w["start"]): w["values"] for w in page.json()["windows"]}

            wait_matching("daily KPIs", served, expected, exact={"trips"})

            table = f"{table_path(run, 'trips')}/entries"
            total = wait_for(
                lambda: (
                    (t := http.get(table, params={"limit": 1}).json()["total"]) == len(trips) and t
                ),
                60,
                "every completed trip in the trip table",
            )
            assert total == len(trips)
            sample = trips[len(trips) // 2]
            entry = http.get(f"{table}/{sample['trip_id']}").json()
            assert entry["value"]["pickup_datetime"] == sample["pickup_datetime"]
            assert close(entry["value"]["fare_amount"], float(sample["fare_amount"]))
            orphan = http.get(f"{table}/0rphan0000000000")
            assert orphan.status_code == 404
