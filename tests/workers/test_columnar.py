"""The columnar batch path (flowmill_workers.steps.windows_columnar) against the per-event
path it stands in for: the same partials, late events and watermark on clean batches of
tumbling and hopping windows, and every batch it cannot be sure of handed back, so
hostile events are still dead-lettered one by one with their reason. In memory: no Kafka.
"""

from __future__ import annotations

import json
import random
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from flowmill_workers.runtime.batch_compute import BatchCompute, PartitionResult
from flowmill_workers.sinks.redis_tables import PartitionRange
from tests.workers.harness import pipeline

TP = TopicPartition("trips", 0)
MINUTE = 60_000


def compute(window: dict[str, Any]) -> BatchCompute:
    p = pipeline(
        "col",
        [{"name": "trips"}],
        [
            {
                "name": "agg",
                "from": "trips",
                "keyBy": "region",
                "window": {"eventTime": "ts", **window},
                "aggregate": {
                    "n": "count",
                    "total": {"sum": "fare"},
                    "mean": {"avg": "fare"},
                    "low": {"min": "fare"},
                    "high": {"max": "fare"},
                },
                "sink": {"redis": {"table": "agg"}},
            }
        ],
    )
    return BatchCompute(p, p.spec.step("agg"))


def records(values: list[bytes | None], first: int = 0) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(
            "trips", 0, first + i, 1_763_800_000_000, 0, None, v, None, 0, len(v or b""), ()
        )
        for i, v in enumerate(values)
    ]


def both(
    window: dict[str, Any], batches: list[list[bytes | None]]
) -> tuple[list[PartitionResult], list[PartitionResult]]:
    """The batches through a step with the columnar path and through one without it."""
    fast, slow = compute(window), compute(window)
    assert fast.decoder is not None
    slow.decoder = None
    out_fast, out_slow, offset = [], [], 0
    for values in batches:
        out_fast.append(fast.partition(TP, records(values, offset)))
        out_slow.append(slow.partition(TP, records(values, offset)))
        offset += len(values)
    return out_fast, out_slow


def same(a: PartitionResult, b: PartitionResult) -> None:
    assert a.windows is not None and b.windows is not None
    assert a.windows.partials == b.windows.partials
    assert a.windows.late == b.windows.late
    assert [(d.record.offset, d.reason) for d in a.dead] == [
        (d.record.offset, d.reason) for d in b.dead
    ]
    assert (a.watermark, a.events_out, a.rng) == (b.watermark, b.events_out, b.rng)


def clean_batches(seed: int) -> list[list[bytes | None]]:
    """Out-of-order times (seconds and milliseconds, ints and floats), null and missing
    fares, ints among floats: all of it the columnar path must take."""
    rng = random.Random(seed)
    base = 1_763_800_000_000
    batches = []
    for b in range(4):
        batch: list[bytes | None] = []
        for i in range(400):
            ts: Any = base + b * 90_000 + i * 200 - rng.randrange(0, 150_000)
            if i % 7 == 0:
                ts = ts / 1000  # epoch seconds, a float
            event: dict[str, Any] = {
                "region": f"r{rng.randrange(9)}",
                "ts": ts,
                "x": [1, {"y": "z"}],
            }
            pick = rng.random()
            if pick < 0.1:
                event["fare"] = None
            elif pick < 0.2:
                pass  # no fare at all: counted, not summed
            elif pick < 0.3:
                event["fare"] = rng.randrange(100)  # an int
            else:
                event["fare"] = round(rng.uniform(-5, 60), 3)
            batch.append(json.dumps(event).encode())
        batches.append(batch)
    return batches


def test_columnar_equals_per_event_on_tumbling_and_hopping_windows() -> None:
    for window in (
        {"size": "1m", "allowedLateness": "30s"},
        {"size": "1m"},
        {"type": "hopping", "size": "2m", "advance": "30s", "allowedLateness": "20s"},
        {"type": "hopping", "size": "1m", "advance": "15s"},
    ):
        for seed in (1, 2):
            fast, slow = both(window, clean_batches(seed))
            assert any(r.windows and r.windows.late for r in slow), "the data has late events"
            for a, b in zip(fast, slow, strict=True):
                same(a, b)
    # The step really took the columnar path (a miss would make both sides per-event).
    step = compute({"size": "1m"})
    result = PartitionResult(rng=PartitionRange("trips", 0, 0, 400))
    assert step._try_columnar(result, records(clean_batches(3)[0]), None)


def test_batches_the_columnar_path_cannot_be_sure_of_are_dead_lettered_per_event() -> None:
    good = b'{"region": "a", "ts": 1763800000000, "fare": 1.5}'
    hostile: list[bytes | None] = [
        # Two values that parse as one object when joined (a string spanning them) and
        # one that holds two: as many rows as values, so only the per-value check and
        # the per-event path catch them.
        b'{"region": "m", "ts": 1763800000001, "s": "}',
        b'{", "fare": 2}',
        b'{"region": "a", "ts": 1763800000002}{"region": "b", "ts": 1763800000003}',
        b'{"region": "a", "ts": 1763800000004, "fare": 1}\n',  # a trailing newline
        b'{"region": 7, "ts": 1763800000006}',  # a number as key: fine, per event
        b'{"region": "a", "ts": true}',
        b'{"region": "a", "ts": 1763800000007, "fare": "2.5"}',  # text fare: per event
        b'{"region": "a", "ts": 1763800000008, "fare": NaN}',
        b'{"region": "a", "ts": 1763800000009, "note": "\xff"}',  # invalid UTF-8
        b'{"ts": 1763800000010}',
        b"[1, 2]",
        b"",
        None,
    ]
    for bad in hostile:
        fast, slow = both({"size": "1m"}, [[good, bad, good]])
        same(fast[0], slow[0])
        decoded = compute({"size": "1m"}).decoder
        assert decoded is not None and decoded.decode([good, bad, good]) is None, bad
    # Pretty-printed JSON is fine either way: one object over several lines.
    pretty = b'{"region": "a",\n "ts": 1763800000005}'
    fast, slow = both({"size": "1m"}, [[good, pretty, good]])
    same(fast[0], slow[0])
    assert not fast[0].dead and fast[0].events_out == 3
    fast, _ = both({"size": "1m"}, [hostile])
    reasons = {d.record.offset: d.reason for d in fast[0].dead}
    assert set(reasons) == {0, 1, 2, 5, 7, 8, 9, 10, 11, 12}, reasons
    assert "malformed JSON" in reasons[1] and "UTF-8" in reasons[8] and "null value" in reasons[12]
