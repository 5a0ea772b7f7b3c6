"""Per-rider fraud rules on trip requests: a Faust agent run as a flowmill step
(k8s/examples/trip-fraud.yaml, docs/faust.md).

Two rules need each rider's recent trips, state no built-in step keeps:

- burst: more than BURST_TRIPS trips requested within BURST_WINDOW_S seconds;
- impossible_speed: the pickup is further from the previous one than MAX_KMH allows in
  the time between them.

Each flag goes to the `fraud-flags` topic keyed by rider. The rider's recent trips live in
the Table `rider-trips` (its changelog restores them after a restart).

Faust processes at least once: after a crash, events since the last offset commit are
processed again, on top of a table that may already hold them. The agent is written for
that: a trip already in the rider's history is evaluated against the trips before it, as
the first time, and not appended again, so a replay repeats its flags (duplicates) but
never changes them (as long as the rider's last HISTORY trips reach back to it).

flowmill sets the broker, the app id and the topics' names; the names below are the
code's own (the step's `faust.outputs` maps `fraud-flags` to a Pipeline topic, and the
agent's input is the step's `from`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import faust

BURST_TRIPS = 3
BURST_WINDOW_S = 600.0
MAX_KMH = 250.0
HISTORY = 20
"""Trips kept per rider: the rules need the last 10 minutes, the rest lets a replay after
a crash find its trip (a replay reaches back one commit interval, a few seconds)."""

app = faust.App("fraud-rules", value_serializer="json")
trips = app.topic("trips-valid", value_serializer="json")
flags = app.topic("fraud-flags", value_serializer="json")
rider_trips = app.Table("rider-trips", default=list)


def _km(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Great-circle distance (haversine, Earth radius 6371 km)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def evaluate(trip: dict[str, Any], before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flags of `trip` given the rider's earlier recent trips."""
    out = []
    recent = [t for t in before if trip["t"] - t["t"] <= BURST_WINDOW_S]
    if len(recent) + 1 > BURST_TRIPS:
        out.append({"rule": "burst", "trips": len(recent) + 1})
    if before:
        last = before[-1]
        km, hours = _km(last, trip), (trip["t"] - last["t"]) / 3600
        if km > 1.0 and (hours <= 0 or km / hours > MAX_KMH):
            out.append({"rule": "impossible_speed", "km": round(km, 1), "after": last["trip_id"]})
    return out


@app.agent(trips)
async def detect(stream: faust.StreamT[Any]) -> None:
    async for value in stream:
        rider = value["rider_id"]
        trip = {
            "trip_id": value["trip_id"],
            "t": datetime.fromisoformat(value["requested_at"]).timestamp(),
            "lat": value["lat"],
            "lon": value["lon"],
        }
        history: list[dict[str, Any]] = list(rider_trips[rider])
        ids = [t["trip_id"] for t in history]
        replayed = trip["trip_id"] in ids
        before = history[: ids.index(trip["trip_id"])] if replayed else history
        for flag in evaluate(trip, before):
            # Keyed by rider, so a rider's flags stay in order downstream.
            await flags.send(
                key=rider,
                value={
                    "rider_id": rider,
                    "trip_id": trip["trip_id"],
                    "at": value["requested_at"],
                    **flag,
                },
            )
        if not replayed:
            rider_trips[rider] = [*history, trip][-HISTORY:]
