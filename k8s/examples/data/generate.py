"""Regenerates the example data sets in this folder (deterministic: same files every run).

    python k8s/examples/data/generate.py

Nothing here reaches the internet, so the examples ship small synthetic data shaped like
the real systems': StreamPulse trip events, Streamlytics watch logs, the trip start/end
files of the trip-processing seed, and the Citi Bike stations the local GBFS feed serves.
Each data set includes a few bad records on purpose, to show dead-lettering.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def streampulse() -> None:
    """2,000 trip events over 30 minutes in 6 regions. On-time events are at most 20 s out
    of order (the example allows 30 s); 15 arrive 3-5 minutes behind their region (late,
    dead-lettered); 8 are invalid (dead-lettered by the schema or the window)."""
    rng = random.Random(4)
    start = datetime(2025, 8, 15, 10, 0, tzinfo=UTC)
    rows: list[list[object]] = []
    seconds = sorted(rng.uniform(0, 1800) for _ in range(1977))
    for n, sec in enumerate(seconds):
        jitter = rng.uniform(-20, 0)  # reported up to 20 s after it happened
        moment = start + timedelta(seconds=max(0.0, sec + jitter))
        region = rng.choice([1, 1, 2, 2, 3, 4, 5, 6])
        duration = rng.randint(180, 3600)
        distance = round(duration / 3600 * rng.uniform(8, 35), 2)
        fare = round(2.5 + distance * rng.uniform(1.4, 2.2) + duration / 60 * 0.3, 2)
        rows.append([f"trip_{n:05d}", region, iso(moment), fare, duration, distance])
    late_at = sorted(rng.sample(range(400, len(rows)), 15))
    for i, at in enumerate(late_at):
        region = rows[at][1]
        newest = max(datetime.fromisoformat(str(r[2])) for r in rows[:at] if r[1] == region)
        moment = newest - timedelta(seconds=rng.uniform(180, 300))
        rows.insert(at, [f"late_{i:03d}", region, iso(moment), 18.5, 900, 6.1])
    bad = [
        ["bad_000", 3, iso(start + timedelta(minutes=5)), "", 600, 3.0],  # no fare
        ["bad_001", 2, iso(start + timedelta(minutes=9)), -4.0, 600, 3.0],  # negative fare
        ["bad_002", "", iso(start + timedelta(minutes=12)), 9.0, 600, 3.0],  # no region
        ["bad_003", 1, "not-a-time", 9.0, 600, 3.0],  # unreadable event time
        ["bad_004", 4, iso(start + timedelta(minutes=15)), 9.0, -60, 3.0],  # negative duration
        ["bad_005", 5, iso(start + timedelta(minutes=18)), 9.0, 600, "far"],  # distance text
        ["", 6, iso(start + timedelta(minutes=21)), 9.0, 600, 3.0],  # no trip id
        ["bad_007", 0, iso(start + timedelta(minutes=24)), 9.0, 600, 3.0],  # region 0
    ]
    for i, row in enumerate(bad):
        rows.insert(200 + i * 220, row)
    header = ["trip_id", "region_id", "event_time", "fare", "duration", "distance"]
    write_csv(HERE / "streampulse" / "trips.csv", header, rows)


SHOWS = {
    # show: episode length in minutes
    "Stranger Things": 51,
    "The Crown": 58,
    "Bridgerton": 62,
    "Wednesday": 48,
    "The Office": 22,
    "Friends": 22,
    "Squid Game": 55,
    "Dark": 53,
    "Money Heist": 50,
    "Ozark": 60,
    "Glass Onion": 139,
    "The Irishman": 209,
}


def streamlytics() -> None:
    """2,000 watch events of 150 users over a week, in time order, plus 6 invalid ones.
    About one sitting in twelve is a binge: 3 to 6 episodes of one show back to back,
    each starting a few minutes after the previous one ended."""
    rng = random.Random(7)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    shows = list(SHOWS)
    weights = [9, 7, 8, 8, 10, 9, 6, 4, 5, 5, 2, 1]
    timed: list[tuple[float, list[object]]] = []
    while len(timed) < 2000:
        sec = rng.uniform(0, 7 * 86400)
        user = f"u{rng.randint(1, 150):03d}"
        show = rng.choices(shows, weights)[0]
        length = SHOWS[show]
        episodes = rng.randint(3, 6) if length < 100 and rng.random() < 0.08 else 1
        for _ in range(episodes):
            if episodes > 1:
                watched = round(length * rng.uniform(0.8, 1.0), 1)
            else:
                watched = round(length * rng.uniform(0.05, 1.0), 1)
            timed.append((sec, [user, show, length, watched, iso(start + timedelta(seconds=sec))]))
            # The next episode starts 1 to 12 minutes after this one ended.
            sec += watched * 60 + rng.uniform(60, 720)
    timed.sort(key=lambda t: t[0])
    rows = [r for _, r in timed[:2000]]
    bad = [
        ["u001", "Dark", 53, -12.0, iso(start + timedelta(hours=5))],  # negative duration
        ["u002", "", 53, 30.0, iso(start + timedelta(hours=30))],  # no show
        ["", "Ozark", 60, 30.0, iso(start + timedelta(hours=50))],  # no user
        ["u004", "Friends", 0, 20.0, iso(start + timedelta(hours=70))],  # zero length
        ["u005", "Friends", 22, "twenty", iso(start + timedelta(hours=90))],  # not a number
        ["u006", "Wednesday", 48, 30.0, ""],  # no date
    ]
    for i, row in enumerate(bad):
        at = next(n for n, r in enumerate(rows) if str(r[4]) > str(row[4] or rows[300 * i][4]))
        rows.insert(at, row)
    header = ["user_id", "show_name", "show_length_minutes", "watch_duration_minutes", "watch_date"]
    write_csv(HERE / "streamlytics" / "watch_logs.csv", header, rows)


def trips() -> None:
    """1,000 taxi trips over three days as two files, like the seed's trip_start.csv and
    trip_end.csv: 30 trips never end, 10 end events have no start."""
    rng = random.Random(2)
    start = datetime(2025, 5, 25, tzinfo=UTC)
    starts, ends = [], []
    for n in range(1000):
        trip_id = f"c66ce556bc{n:06d}"
        pickup = start + timedelta(seconds=rng.uniform(0, 3 * 86400 - 7200))
        minutes = rng.uniform(4, 90)
        dropoff = pickup + timedelta(minutes=minutes)
        distance = round(minutes / 60 * rng.uniform(6, 30), 2)
        fare = round(3.0 + distance * 2.5 + rng.uniform(0, 6), 2)
        starts.append(
            [
                trip_id,
                rng.randint(1, 265),
                rng.randint(1, 265),
                rng.choice([1, 2]),
                iso(pickup),
                iso(dropoff + timedelta(minutes=rng.uniform(-5, 5))),
                round(fare * rng.uniform(0.85, 1.15), 2),
            ]
        )
        ends.append(
            [
                iso(dropoff),
                rng.choice([1.0, 1.0, 1.0, 2.0, 5.0]),
                rng.randint(1, 4),
                distance,
                fare,
                round(fare * rng.choice([0, 0.1, 0.15, 0.2]), 2),
                rng.choice([1, 1, 2, 3]),
                rng.choice([1, 2]),
                trip_id,
            ]
        )
    never_end = set(rng.sample(range(1000), 30))
    ends = [e for n, e in enumerate(ends) if n not in never_end]
    for n in range(10):
        moment = start + timedelta(seconds=rng.uniform(3600, 3 * 86400 - 3600))
        ends.append([iso(moment), 1.0, 1, 2.0, 9.5, 0.0, 1, 1, f"0rphan0000{n:06d}"])
    starts.sort(key=lambda r: str(r[4]))
    ends.sort(key=lambda r: str(r[0]))
    write_csv(
        HERE / "trips" / "trip_start.csv",
        [
            "trip_id",
            "pickup_location_id",
            "dropoff_location_id",
            "vendor_id",
            "pickup_datetime",
            "estimated_dropoff_datetime",
            "estimated_fare_amount",
        ],
        starts,
    )
    write_csv(
        HERE / "trips" / "trip_end.csv",
        [
            "dropoff_datetime",
            "rate_code",
            "passenger_count",
            "trip_distance",
            "fare_amount",
            "tip_amount",
            "payment_type",
            "trip_type",
            "trip_id",
        ],
        ends,
    )


REGIONS = {
    "71": ("Manhattan", 40.758, -73.985),
    "70": ("Brooklyn", 40.690, -73.960),
    "311": ("Queens", 40.745, -73.920),
    "142": ("Jersey City", 40.720, -74.045),
}


def citibike() -> None:
    """24 stations in 4 regions; the local GBFS feed draws their status from `seed`."""
    rng = random.Random(11)
    stations = []
    for region_id, (name, lat, lon) in REGIONS.items():
        for i in range(6):
            station_id = str(rng.randint(1000, 9999))
            stations.append(
                {
                    "station_id": station_id,
                    "name": f"{name} & {rng.choice(['1st', '2nd', '3rd', '5th', 'Park', 'Grand'])} "
                    f"{rng.choice(['Ave', 'St', 'Pl'])} #{i + 1}",
                    "short_name": f"{region_id}.{i + 1:02d}",
                    "lat": round(lat + rng.uniform(-0.02, 0.02), 6),
                    "lon": round(lon + rng.uniform(-0.02, 0.02), 6),
                    "capacity": rng.choice([15, 19, 23, 31, 39]),
                    "region_id": region_id,
                }
            )
    feed = {
        "system": {
            "system_id": "flowmill_citibike_demo",
            "language": "en",
            "name": "Citi Bike (local demo feed)",
            "timezone": "America/New_York",
        },
        "period": 30,
        "snapshots": 0,
        "seed": 11,
        "regions": [{"region_id": r, "name": n} for r, (n, _, _) in REGIONS.items()],
        "stations": stations,
    }
    folder = HERE / "citibike"
    folder.mkdir(exist_ok=True)
    (folder / "feed.json").write_text(json.dumps(feed, indent=2) + "\n")
    region_map = ", ".join(f"'{s['station_id']}': '{s['region_id']}'" for s in stations)
    print("citibike region_id map for the manifest:\n{" + region_map + "}[station_id]")


def trip_fraud() -> None:
    """Ride-hailing trip requests of 40 riders over two hours, for the Faust rules of the
    trip-fraud example: most riders take a trip every 15-40 minutes near their last
    dropoff; 8 riders also book bursts of 4-5 trips within 8 minutes, 6 riders' accounts
    are used about 300 km apart within minutes (an impossible speed). 4 records are
    invalid (dead-lettered by the schema)."""
    rng = random.Random(13)
    start = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
    rows: list[tuple[float, dict[str, object]]] = []
    riders = [f"rider_{n:03d}" for n in range(40)]
    bursty, teleporting = set(riders[3:11]), set(riders[20:26])
    count = 0

    def trip(rider: str, at: float, lat: float, lon: float) -> None:
        nonlocal count
        event = {
            "trip_id": f"t{count:05d}",
            "rider_id": rider,
            "requested_at": iso(start + timedelta(seconds=at)),
            "lat": round(lat, 5),
            "lon": round(lon, 5),
            "fare": round(rng.uniform(6, 45), 2),
        }
        count += 1
        rows.append((at, event))

    for rider in riders:
        lat, lon = 40.70 + rng.uniform(-0.08, 0.08), -73.95 + rng.uniform(-0.08, 0.08)
        at = rng.uniform(0, 900)
        burst_at = rng.uniform(1800, 5400) if rider in bursty else None
        jump_at = rng.uniform(2400, 6000) if rider in teleporting else None
        while at < 7200:
            trip(rider, at, lat, lon)
            if burst_at is not None and at >= burst_at:
                for _ in range(rng.randint(3, 4)):
                    at += rng.uniform(30, 150)
                    trip(rider, at, lat + rng.uniform(-0.01, 0.01), lon + rng.uniform(-0.01, 0.01))
                burst_at = None
            if jump_at is not None and at >= jump_at:
                # Boston, minutes after a New York pickup.
                at += rng.uniform(120, 600)
                trip(rider, at, 42.36 + rng.uniform(-0.02, 0.02), -71.06 + rng.uniform(-0.02, 0.02))
                jump_at = None
            at += rng.uniform(900, 2400)
            lat += rng.uniform(-0.03, 0.03)
            lon += rng.uniform(-0.03, 0.03)
    rows.sort(key=lambda row: row[0])
    events = [event for _, event in rows]
    bad: list[dict[str, object]] = [
        {"trip_id": "bad_0", "requested_at": iso(start), "lat": 40.7, "lon": -73.9, "fare": 9.0},
        {
            "trip_id": "bad_1",
            "rider_id": "rider_000",
            "requested_at": iso(start),
            "lat": 140.0,
            "lon": -73.9,
            "fare": 9.0,
        },
        {
            "trip_id": "bad_2",
            "rider_id": "rider_001",
            "requested_at": "yesterday",
            "lat": 40.7,
            "lon": -73.9,
            "fare": 9.0,
        },
        {
            "trip_id": "bad_3",
            "rider_id": "rider_002",
            "requested_at": iso(start),
            "lat": 40.7,
            "lon": -73.9,
            "fare": -3.0,
        },
    ]
    for n, record in enumerate(bad):
        events.insert(100 + 150 * n, record)
    folder = HERE / "trip-fraud"
    folder.mkdir(exist_ok=True)
    with (folder / "trips.jsonl").open("w") as handle:
        for event in events:
            handle.write(json.dumps(event, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    trip_fraud()
    streampulse()
    streamlytics()
    trips()
    citibike()
