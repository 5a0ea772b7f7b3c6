"""Helpers of the Faust step tests: a Pipeline around the example agent on the session's
broker, its worker as a child process, the agent's rules recomputed in plain Python, and
the example's served tables read back (under `flowmill run` and on the node alike)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec import Pipeline, all_topics
from tests.harness.waiting import unique

REPO = Path(__file__).resolve().parents[2]
AGENT_CODE = REPO / "k8s" / "examples" / "faust"
TRIPS = REPO / "k8s" / "examples" / "data" / "trip-fraud" / "trips.jsonl"
HOUR_MS = 3_600_000
RULES = ("burst", "impossible_speed")


def faust_manifest(into: Path, kafka: EmbeddedKafka, **faust: Any) -> tuple[Path, dict[str, Any]]:
    """A Pipeline of one Faust step running the example agent, its topics created."""
    suffix = unique("f")
    doc: dict[str, Any] = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": f"fs-{suffix}"},
        "spec": {
            "topics": [
                {"name": f"trips-{suffix}", "partitions": 3},
                {"name": f"flags-{suffix}", "partitions": 3},
            ],
            "steps": [
                {
                    "name": "rules",
                    "from": f"trips-{suffix}",
                    "faust": {
                        "app": "fraud_rules:app",
                        "agent": "detect",
                        "outputs": {"fraud-flags": f"flags-{suffix}"},
                        "tables": ["rider-trips"],
                        "code": {"path": str(AGENT_CODE)},
                        **faust,
                    },
                }
            ],
        },
    }
    path = into / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    pipeline = Pipeline.model_validate(doc)
    kafka.create_topics([(t.name, t.partitions) for t in all_topics(pipeline)])
    return path, doc


def worker(
    manifest: Path, kafka: EmbeddedKafka, port: int, log: Path, code: Path = AGENT_CODE
) -> subprocess.Popen[bytes]:
    """`flowmill worker` of the step, as a Deployment or `flowmill run` starts it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowmill.cli",
            "worker",
            "--pipeline",
            str(manifest),
            "--step",
            "rules",
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--metrics-port",
            str(port),
            "--code-path",
            str(code),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def metrics(port: int) -> str:
    """The worker's /metrics; empty while it is not listening yet."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False).text
    except httpx.TransportError:
        return ""


def valid_trips() -> list[dict[str, Any]]:
    """The example's trip requests the validate step passes (the schema, by hand)."""
    out = []
    for line in TRIPS.read_text().splitlines():
        event = json.loads(line)
        try:
            datetime.fromisoformat(event["requested_at"])
        except (KeyError, ValueError):
            continue
        if (
            event.get("rider_id")
            and -90 <= event["lat"] <= 90
            and -180 <= event["lon"] <= 180
            and event["fare"] >= 0
        ):
            out.append(event)
    return out


def expected_flags(trips: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(rider, trip, rule) of every flag, recomputed from the rules as docs/faust.md states
    them: more than 3 trips within 10 minutes; more than 250 km/h (great circle) from the
    rider's previous pickup, when more than 1 km apart."""
    seen: dict[str, list[tuple[float, float, float]]] = {}
    out = []
    for trip in trips:
        t = datetime.fromisoformat(trip["requested_at"]).timestamp()
        before = seen.setdefault(trip["rider_id"], [])
        if sum(1 for (u, _, _) in before if t - u <= 600) + 1 > 3:
            out.append((trip["rider_id"], trip["trip_id"], "burst"))
        if before:
            u, lat, lon = before[-1]
            km = _great_circle_km(lat, lon, trip["lat"], trip["lon"])
            if km > 1 and (t <= u or km / ((t - u) / 3600) > 250):
                out.append((trip["rider_id"], trip["trip_id"], "impossible_speed"))
        before.append((t, trip["lat"], trip["lon"]))
    return out


def _great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # Spherical law of cosines (the agent uses haversine: the same distance).
    a, b = math.radians(lat1), math.radians(lat2)
    cos = math.sin(a) * math.sin(b) + math.cos(a) * math.cos(b) * math.cos(
        math.radians(lon2 - lon1)
    )
    return 6371.0 * math.acos(min(1.0, max(-1.0, cos)))


@dataclass(frozen=True)
class ExpectedServing:
    """What the trip-fraud example serves once every trip went through, from the rules
    recomputed in plain Python (the keys and fields of latest_flags and flags_per_rule)."""

    flags: list[tuple[str, str, str]]
    latest: dict[Any, dict[str, Any]]
    """rider -> {trip_id, rule} of the rider's last flag (table flagged_riders)."""
    per_rule: dict[Any, dict[str, Any]]
    """(rule, hour start in ms) -> {flags, riders} (table flags_per_rule)."""


def expected_serving(trips: list[dict[str, Any]]) -> ExpectedServing:
    flags = expected_flags(trips)
    at = {t["trip_id"]: t["requested_at"] for t in trips}
    latest = {rider: {"trip_id": trip, "rule": rule} for rider, trip, rule in flags}
    per_rule: dict[Any, dict[str, Any]] = {}
    riders: dict[Any, set[str]] = defaultdict(set)
    for rider, trip, rule in flags:
        ms = int(datetime.fromisoformat(at[trip]).timestamp() * 1000)
        key = (rule, ms - ms % HOUR_MS)
        per_rule.setdefault(key, {"flags": 0})["flags"] += 1
        riders[key].add(rider)
    for key, values in per_rule.items():
        values["riders"] = len(riders[key])
    return ExpectedServing(flags, latest, per_rule)


def latest_flags(http: httpx.Client, table: str) -> dict[Any, dict[str, Any]]:
    """The served latest flag per rider (`table`: the API path of flagged_riders); empty
    while the API does not answer 200."""
    page = http.get(f"{table}/entries", params={"limit": 1000})
    if page.status_code != 200:
        return {}
    return {
        e["key"]: {"trip_id": e["value"]["trip_id"], "rule": e["value"]["rule"]}
        for e in page.json()["entries"]
    }


def flags_per_rule(http: httpx.Client, table: str) -> dict[Any, dict[str, Any]]:
    """The served hourly windows per rule (`table`: the API path of flags_per_rule)."""
    found: dict[Any, dict[str, Any]] = {}
    for rule in RULES:
        page = http.get(f"{table}/keys/{rule}/windows")
        if page.status_code == 200:
            for w in page.json()["windows"]:
                found[(rule, w["start"])] = w["values"]
    return found
