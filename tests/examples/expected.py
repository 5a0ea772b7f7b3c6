"""The values the examples must serve, computed here in plain Python from their input, with
no flowmill code: the local end-to-end tests (tests/examples/) and the cluster ones
(tests/cluster/) check the API against these same functions.

StreamPulse replays the step's event-time rules: per partition, in offset order, the
watermark is the newest valid event time, and an event whose window ended more than
allowedLateness before the watermark is late (dead-lettered)."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

MINUTE_MS = 60_000
DAY_MS = 86_400_000
# streampulse.yaml's window step: allowedLateness 30s.
STREAMPULSE_LATENESS_MS = 30_000


# -- StreamPulse ------------------------------------------------------------------------------


def streampulse_valid(e: dict[str, Any]) -> bool:
    """The manifest's JSON Schema, spelt out."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return (
        isinstance(e.get("trip_id"), str)
        and e["trip_id"] != ""
        and isinstance(e.get("region_id"), int)
        and not isinstance(e["region_id"], bool)
        and e["region_id"] >= 1
        and isinstance(e.get("event_time"), str)
        and number(e.get("fare"))
        and e["fare"] >= 0
        and isinstance(e.get("duration"), int)
        and e["duration"] >= 0
        and number(e.get("distance"))
        and e["distance"] >= 0
    )


def event_ms(text: str) -> int | None:
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return None


def streampulse_accepted(
    records: list[dict[str, Any]],
) -> tuple[list[tuple[tuple[str, int], dict[str, Any]]], list[Any]]:
    """The events the window step aggregates, each with its (region, window start), and the
    trip_ids of the dead-lettered ones, from the records of trip-events in partition, then
    offset order (harness.read_topic)."""
    accepted: list[tuple[tuple[str, int], dict[str, Any]]] = []
    dead: list[Any] = []
    watermark: dict[int, int] = {}
    for r in records:
        e = r["event"]
        ts = event_ms(e["event_time"]) if streampulse_valid(e) else None
        if ts is None:
            dead.append(e.get("trip_id"))
            continue
        start = ts - ts % MINUTE_MS
        mark = watermark.get(r["partition"])
        if mark is not None and start + MINUTE_MS + STREAMPULSE_LATENESS_MS <= mark:
            dead.append(e.get("trip_id"))
            continue
        watermark[r["partition"]] = ts if mark is None else max(mark, ts)
        accepted.append(((str(e["region_id"]), start), e))
    return accepted, dead


def streampulse_windows(
    records: list[dict[str, Any]],
) -> tuple[dict[Any, dict[str, Any]], list[Any]]:
    """{(region, start): aggregates} of the by-region step, and the dead-lettered trip_ids."""
    accepted, dead = streampulse_accepted(records)
    events: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for key, e in accepted:
        events[key].append(e)
    expected = {
        key: {
            "trips": len(es),
            "revenue": sum(e["fare"] for e in es),
            "avg_duration": sum(e["duration"] for e in es) / len(es),
            "avg_distance": sum(e["distance"] for e in es) / len(es),
            "max_fare": max(e["fare"] for e in es),
        }
        for key, es in events.items()
    }
    return expected, dead


# -- Trips ------------------------------------------------------------------------------------


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {r["trip_id"]: r for r in csv.DictReader(handle)}


def completed_trips(data: Path) -> list[dict[str, Any]]:
    """Trips with both a start and an end, from the example's data folder."""
    starts, ends = csv_rows(data / "trip_start.csv"), csv_rows(data / "trip_end.csv")
    return [{**starts[t], **ends[t]} for t in ends if t in starts]


def daily_kpis(trips: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    fares: dict[int, list[float]] = defaultdict(list)
    for trip in trips:
        ts = int(datetime.fromisoformat(trip["dropoff_datetime"]).timestamp() * 1000)
        fares[ts - ts % DAY_MS].append(float(trip["fare_amount"]))
    return {
        ("all", day): {
            "total_fare": sum(f),
            "trips": len(f),
            "avg_fare": sum(f) / len(f),
            "max_fare": max(f),
            "min_fare": min(f),
        }
        for day, f in fares.items()
    }


# -- Citi Bike --------------------------------------------------------------------------------


def citibike_region_minutes(
    events: list[dict[str, Any]], regions: dict[str, str]
) -> dict[Any, dict[str, Any]]:
    """The region-minute step's windows, from the station_status events ingested."""
    acc: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        ts = e["last_updated"] * 1000
        acc[(regions[e["station_id"]], ts - ts % MINUTE_MS)].append(e)
    return {
        key: {
            "reports": len(es),
            "stations": len({e["station_id"] for e in es}),
            "avg_bikes_available": sum(e["num_bikes_available"] for e in es) / len(es),
            "avg_ebikes_available": sum(e["num_ebikes_available"] for e in es) / len(es),
            "avg_docks_available": sum(e["num_docks_available"] for e in es) / len(es),
            "min_bikes_available": min(e["num_bikes_available"] for e in es),
            "empty_station_reports": sum(e["num_bikes_available"] == 0 for e in es),
        }
        for key, es in acc.items()
    }


CITIBIKE_AVAILABILITY_FIELDS = (
    "num_bikes_available",
    "num_docks_available",
    "is_renting",
    "last_updated",
)


def citibike_availability(events: list[dict[str, Any]], final: int) -> dict[Any, dict[str, Any]]:
    """The station_availability table after the last snapshot (last_updated == final)."""
    last = {e["station_id"]: e for e in events if e["last_updated"] == final}
    return {sid: {f: e[f] for f in CITIBIKE_AVAILABILITY_FIELDS} for sid, e in last.items()}
