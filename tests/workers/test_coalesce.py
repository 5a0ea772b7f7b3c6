"""Batches a window step computed while a write was in flight, coalesced into one
(batch_compute.coalesce): the same partials as the events computed as one batch, each
partition's range spanning both, and batches that cannot be one refused. In memory."""

from __future__ import annotations

import json
import math
import random

from aiokafka import TopicPartition

from flowmill_workers.runtime.batch_compute import BatchCompute, PartitionResult, coalesce
from tests.workers.test_columnar import compute, records

BASE = 1_763_800_000_000


def events(n: int, seed: int, start_ms: int) -> list[bytes | None]:
    """In time order (none late), over a few regions and minutes."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {"region": rng.choice("abcd"), "ts": start_ms + i * 700, "fare": rng.uniform(1, 80)}
        ).encode()
        for i in range(n)
    ]


def batch(
    c: BatchCompute, partition: int, values: list[bytes | None], first: int
) -> PartitionResult:
    rs = records(values, first)
    for r in rs:
        r.partition = partition
    return c.partition(TopicPartition("trips", partition), rs)


def close(a: object, b: object) -> bool:
    """Equal, floats to 1e-12 relative (sums added in another order)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def test_consecutive_batches_coalesce_into_the_batch_of_all_their_events() -> None:
    first, second, other = (
        events(300, 1, BASE),
        events(300, 2, BASE + 210_000),
        events(200, 3, BASE),
    )
    step = compute({"size": "1m"})
    assert step.windows is not None
    earlier = [batch(step, 0, first, 0)]
    later = [batch(step, 0, second, 300), batch(step, 1, other, 0)]
    merged = coalesce(earlier, later, step.windows)
    assert merged is earlier and len(merged) == 2

    # Independently: the same events as one batch per partition, in a fresh step.
    fresh = compute({"size": "1m"})
    whole0, whole1 = batch(fresh, 0, first + second, 0), batch(fresh, 1, other, 0)
    p0, p1 = merged
    assert (p0.rng.first, p0.rng.next, p0.events_in) == (0, 600, 600)
    assert [r.offset for r in p0.records] == list(range(600))
    assert p0.watermark == whole0.watermark and p1.rng == whole1.rng
    assert p0.windows is not None and whole0.windows is not None
    assert p0.windows.partials.keys() == whole0.windows.partials.keys()
    for window, partial in whole0.windows.partials.items():
        assert close(p0.windows.partials[window], partial), window
    # The two batches shared windows (the second starts inside the first's last minute).
    assert len(whole0.windows.partials) < len(earlier[0].windows.partials) + len(
        later[0].windows.partials  # type: ignore[union-attr]
    )


def test_batches_that_cannot_be_one_are_refused_untouched() -> None:
    step = compute({"size": "1m"})
    assert step.windows is not None
    earlier = [batch(step, 0, events(100, 4, BASE), 0)]
    gap = [batch(compute({"size": "1m"}), 0, events(100, 5, BASE + 70_000), 150)]
    before = dict(earlier[0].windows.partials)  # type: ignore[union-attr]
    assert coalesce(earlier, gap, step.windows) is None  # offsets 100-149 are not in either
    assert len(earlier) == 1 and earlier[0].rng.next == 100
    assert earlier[0].windows.partials == before  # type: ignore[union-attr]
