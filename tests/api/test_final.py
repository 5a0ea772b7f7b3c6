"""Final answers: every served window says whether the table's watermark (the smallest of
its input partitions') passed its end + allowedLateness, with that watermark; `final=`
filters; the live stream sends one `final` event when a window becomes final. Expected
values and flags are computed here from the events."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec import Pipeline
from tests.api.harness import ApiServer, collect, serve, sse_events
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce, run_step

MIN = 60_000
BASE = 1_763_800_000_000 - 1_763_800_000_000 % MIN
LATENESS = 30_000
USERS = ["ann", "bob", "cy"]


def events_between(first_min: int, last_min: int, partition: int) -> list[dict[str, Any]]:
    """A view every 7 s per user, with every third one 20 s out of order (within the
    lateness)."""
    out = []
    for i, ts in enumerate(range(BASE + first_min * MIN, BASE + last_min * MIN, 7_000)):
        user = USERS[(i + partition) % len(USERS)]
        out.append({"user": user, "ts": ts - (20_000 if i % 3 == 2 else 0), "p": partition})
    return out


@dataclass
class Final:
    pipeline: Pipeline
    arrivals: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: {0: [], 1: []})

    def base(self, table: str = "per_minute") -> str:
        return f"/pipelines/{self.pipeline.name}/tables/{table}"

    def watermark(self) -> int:
        return min(max(e["ts"] for e in evs) for evs in self.arrivals.values())

    def windows(self, size: int = MIN, advance: int = MIN) -> dict[tuple[str, int], int]:
        """(user, start) -> count: none of the events is late (all within the lateness)."""
        counts: dict[tuple[str, int], int] = defaultdict(int)
        for evs in self.arrivals.values():
            for e in evs:
                last = e["ts"] - e["ts"] % advance
                for start in range(last, e["ts"] - size, -advance):
                    counts[(e["user"], start)] += 1
        return dict(counts)

    async def add(self, kafka: EmbeddedKafka, redis_url: str, events: dict[int, list[Any]]) -> None:
        for q, evs in events.items():
            await produce(kafka.bootstrap_servers, self.pipeline.name, evs, partition=q)
            self.arrivals[q] += evs
        n = sum(map(len, events.values()))
        for step in ("by-minute", "hopping"):
            await run_step(self.pipeline, step, kafka.bootstrap_servers, redis_url, n)


def _window_step(name: str, table: str, window: dict[str, Any], publish: bool) -> dict[str, Any]:
    return {
        "name": name,
        "from": table + "-in",
        "keyBy": "user",
        "window": {"eventTime": "ts", "allowedLateness": "30s", **window},
        "aggregate": {"views": "count"},
        "sink": {"redis": {"table": table, "publish": publish}},
    }


@pytest.fixture(scope="module")
def final(kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis) -> Final:
    if not redis_server.running:
        redis_server.start()
    name = unique("final")
    steps = [
        _window_step("by-minute", "per_minute", {"size": "1m"}, True),
        _window_step("hopping", "hops", {"type": "hopping", "size": "2m", "advance": "1m"}, False),
    ]
    for s in steps:
        s["from"] = name
    p = pipeline(name, [{"name": name, "partitions": 2}], steps)
    create_topics(kafka_broker, p)
    f = Final(p)
    # Partition 1 lags: the table's watermark is its, not partition 0's.
    first = {0: events_between(0, 6, 0), 1: events_between(0, 4, 1)}
    asyncio.run(f.add(kafka_broker, redis_server.url, first))
    return f


@pytest.fixture(scope="module")
def api(final: Final, redis_server: EmbeddedRedis) -> Iterator[ApiServer]:
    with serve([final.pipeline], redis_server.url) as server:
        yield server


def is_final(start: int, size: int, watermark: int) -> bool:
    return start + size + LATENESS <= watermark


def test_every_window_says_whether_it_is_final(api: ApiServer, final: Final) -> None:
    w = final.watermark()
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for table, size, advance in (("per_minute", MIN, MIN), ("hops", 2 * MIN, MIN)):
            want = final.windows(size, advance)
            got = {}
            for user in USERS:
                r = http.get(f"{final.base(table)}/keys/{user}/windows", params={"limit": 1000})
                for win in r.json()["windows"]:
                    got[(user, win["start"])] = win
            assert {k: v["values"]["views"] for k, v in got.items()} == want
            for (_, start), win in got.items():
                assert win["watermark"] == w
                assert win["final"] is is_final(start, size, w), (table, start, w)
            flags = {v["final"] for v in got.values()}
            assert flags == {True, False}, "the data should leave some windows open"


def test_final_filters(api: ApiServer, final: Final) -> None:
    w = final.watermark()
    want = final.windows()
    base = final.base()
    finals = sorted(s for (_, s) in want if is_final(s, MIN, w))
    opens = sorted({s for (_, s) in want} - set(finals))
    with httpx.Client(base_url=api.url, timeout=10) as http:
        r = http.get(f"{base}/keys/ann/windows/latest", params={"n": 2, "final": "true"})
        ann_finals = sorted(s for (u, s) in want if u == "ann" and is_final(s, MIN, w))
        assert [x["start"] for x in r.json()["windows"]] == ann_finals[-2:]
        assert all(x["final"] for x in r.json()["windows"])

        r = http.get(f"{base}/keys/ann/windows", params={"final": "false"})
        assert [x["start"] for x in r.json()["windows"]] == sorted(
            s for (u, s) in want if u == "ann" and not is_final(s, MIN, w)
        )
        r = http.get(f"{base}/windows", params={"final": "true"})
        body = r.json()
        assert body["watermark"] == w
        assert [x["start"] for x in body["windows"]] == sorted(set(finals), reverse=True)
        assert all(x["final"] for x in body["windows"])
        r = http.get(f"{base}/windows", params={"final": "false"})
        assert [x["start"] for x in r.json()["windows"]] == sorted(opens, reverse=True)

        r = http.get(f"{base}/windows/current/top", params={"final": "true"})
        top = r.json()
        assert top["start"] == max(finals) and top["final"] is True and top["watermark"] == w
        assert {k["key"]: k["values"]["views"] for k in top["keys"]} == {
            u: c for (u, s), c in want.items() if s == max(finals)
        }
        current = http.get(f"{base}/windows/current/top").json()
        assert current["start"] == max(opens) and current["final"] is False

        r = http.get(f"{base}/windows/{max(opens)}/top", params={"final": "true"})
        assert r.status_code == 404 and "no final window" in r.json()["detail"]


async def test_live_stream_sends_one_final_event_per_window(
    api: ApiServer, final: Final, kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis
) -> None:
    before = final.watermark()
    # Partition 1 catches up to minute 9 and partition 0 goes on: the table's watermark
    # moves from partition 1's old time to about minute 9.
    more = {0: events_between(6, 10, 0), 1: events_between(4, 9, 1)}
    after = min(max(e["ts"] for e in more[q]) for q in more)
    newly = {
        (u, s) for (u, s) in Final(final.pipeline, {q: final.arrivals[q] + more[q] for q in more})
        .windows() if is_final(s, MIN, after) and not is_final(s, MIN, before)
    }  # fmt: skip
    assert len(newly) >= 6
    sentinel = {"user": "zz-sentinel", "ts": BASE + 60 * MIN, "p": 0}

    def seen_sentinel(events: list[tuple[str, str | None, Any]]) -> bool:
        return any(d.get("key") == sentinel["user"] for _, _, d in events)

    url = f"{api.url}{final.base()}/events"
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url) as response:
        stream = sse_events(response)
        await collect(stream, lambda ev: ev[-1][0] == "ready")
        reader = asyncio.create_task(collect(stream, seen_sentinel, timeout=60))
        await final.add(kafka_broker, redis_server.url, more)
        # Only partition 0 moves on: nothing more becomes final, and since Redis
        # publishes in order, its update arrives after every earlier message.
        await final.add(kafka_broker, redis_server.url, {0: [sentinel]})
        events = await reader

    want = final.windows()
    finals = [(d["key"], d["window"]["start"], d) for name, _, d in events if name == "final"]
    assert sorted((k, s) for k, s, _ in finals) == sorted(newly)  # each once
    for key, start, data in finals:
        # Announced in the batch whose watermark made it final.
        assert data["final"] is True and before < data["watermark"] <= after
        assert is_final(start, MIN, data["watermark"])
        assert data["values"]["views"] == want[(key, start)]
        assert data["window"] == {"start": start, "end": start + MIN}
    # No update of a window follows its final event.
    position = {(k, s): i for i, (name, _, d) in enumerate(events) if name == "final"
                for k, s in [(d["key"], d["window"]["start"])]}  # fmt: skip
    for i, (name, _, d) in enumerate(events):
        if name == "update" and d["window"]:
            at = position.get((d["key"], d["window"]["start"]))
            assert at is None or i < at, d
            assert d["final"] is False or (d["key"], d["window"]["start"]) in position
