"""The window script's table-wide indexes (a key's windows trimmed to `retain`, `keys`,
`wins`, the top-N sets) against a model that applies a batch's updates one by one, as
the script once did: the script writes them once per batch, and must leave what the
update-by-update order left. Batches hold windows out of order, older than what a key
retains, and more members per top-N set than one ZADD chunk takes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from flowmill import serving
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.sinks.redis_tables import (
    APPLIED,
    PartitionRange,
    RedisTableSink,
    write_outcome,
)
from flowmill_workers.steps.windows import WindowAggregator
from tests.workers.harness import pipeline

MINUTE = 60_000
BASE = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE
RETAIN = 3


def step(name: str) -> Any:
    p = pipeline(
        name,
        [{"name": "trips"}],
        [
            {
                "name": "agg",
                "from": "trips",
                "keyBy": "region",
                "window": {"size": "1m", "eventTime": "ts", "retain": RETAIN},
                "aggregate": {"n": "count", "total": {"sum": "fare"}},
                "sink": {"redis": {"table": "agg", "publish": False}},
            }
        ],
    )
    return p.spec.step("agg")


class Model:
    """The table as updates applied one at a time leave it."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], list[float]] = {}
        self.key_windows: dict[str, set[int]] = {}
        self.keys: dict[str, int] = {}
        self.wins: set[int] = set()
        self.top: dict[tuple[int, str], dict[str, float]] = {}

    def apply(self, updates: list[list[Any]]) -> None:
        for key, start_text, (count, total) in updates:
            start = int(start_text)
            acc = self.windows.setdefault((key, start), [0, 0.0])
            acc[0] += count
            acc[1] += total
            self.top.setdefault((start, "n"), {})[key] = acc[0]
            self.top.setdefault((start, "total"), {})[key] = acc[1]
            self.keys[key] = max(self.keys.get(key, start), start)
            self.wins.add(start)
            self.wins = {s for s in self.wins if s >= start - RETAIN * MINUTE}
            starts = self.key_windows.setdefault(key, set())
            starts.add(start)
            while len(starts) > RETAIN:
                old = min(starts)
                starts.remove(old)
                del self.windows[(key, old)]
                for name in ("n", "total"):
                    self.top.get((old, name), {}).pop(key, None)


def batches(rng: random.Random) -> list[list[list[Any]]]:
    # First, one window shared by more keys than one ZADD chunk (1,000 members) holds.
    out = [[[f"wide{i}", str(BASE), [1, 2.0]] for i in range(1_500)]]
    for b in range(30):
        seen: set[tuple[str, int]] = set()
        updates = []
        for _ in range(rng.randrange(1, 40)):
            key = f"k{rng.randrange(6)}"
            # Mostly newer windows as time goes on, some far behind what a key retains.
            start = BASE + rng.randrange(-4, 6 + b // 3) * MINUTE
            if (key, start) not in seen:
                seen.add((key, start))
                updates.append(
                    [key, str(start), [rng.randrange(1, 5), float(rng.randrange(0, 90))]]
                )
        out.append(updates)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_indexes_match_update_by_update(redis_server: EmbeddedRedis, seed: int) -> None:
    name = f"idx{seed}"
    spec = step(name)
    agg = WindowAggregator(spec)
    client = aioredis.from_url(redis_server.url)
    sink = RedisTableSink(client, name, spec)
    model = Model()
    offset = 0
    try:
        for updates in batches(random.Random(seed)):
            pipe = client.pipeline(transaction=False)
            rng = PartitionRange("trips", 0, offset, offset + len(updates))
            await sink.apply_windows(
                pipe, rng, updates, agg.aggregates, agg.size_ms, agg.retain, None,
                starts_fresh=offset == 0,
            )  # fmt: skip
            assert write_outcome((await pipe.execute())[0]).status == APPLIED
            model.apply(updates)
            offset = rng.next
    finally:
        await client.aclose()

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    prefix = serving.table_prefix(name, "agg")
    stored = {}
    for hkey in r.scan_iter(match=f"{prefix}:w:*", count=1000):
        key, start = hkey[len(prefix) + 3 :].rsplit(":", 1)
        row = r.hmget(hkey, "n", "total", "start", "end")
        assert row[2] == start and int(row[3]) == int(start) + MINUTE
        stored[(key, int(start))] = [int(row[0]), float(row[1])]
    assert stored == model.windows
    for key, starts in model.key_windows.items():
        assert {int(s) for s in r.zrange(f"{prefix}:wi:{key}", 0, -1)} == starts, key
    keys = {k: int(s) for k, s in r.zrange(f"{prefix}:keys", 0, -1, withscores=True)}
    assert keys == model.keys
    assert {int(s) for s in r.zrange(f"{prefix}:wins", 0, -1)} == model.wins
    top_keys = set(r.scan_iter(match=f"{prefix}:top:*", count=1000))
    assert top_keys == {f"{prefix}:top:{s}:{n}" for (s, n), m in model.top.items() if m}
    for (start, agg_name), members in model.top.items():
        got = dict(r.zrange(f"{prefix}:top:{start}:{agg_name}", 0, -1, withscores=True))
        assert got == members, (start, agg_name)
    r.close()
