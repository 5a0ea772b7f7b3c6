"""`window.idleTimeout`: an input partition without events stops holding the table's
watermark back (as Flink's withIdleness), so windows still become final.

The table's watermark is the smallest of its input partitions' (flowmill.serving), so one
partition that receives nothing would keep every window open. A partition counts as idle
once it brought no events for idleTimeout of wall-clock time: its owner knows that of its
own partitions, and learns it of the others from the checkpoint hash, where each batch
with events records when it came (`{topic}:{partition}:seen`).

The owner of an idle partition raises that partition's watermark to the smallest
watermark of the partitions that are not idle (when all are, to the smallest of those
that have a watermark: a partition that never had events stops counting, the others keep
theirs). It does so with a batch without events: an
empty PartitionResult written by the same fenced script as any batch, which moves the
partition's watermark and with it the table's (announcing and emitting the windows that
became final). Every later batch of the partition is computed against the raised
watermark, so what the worker decides and what Redis holds agree across crashes: an event
the partition brings later behind the raised watermark is late, as with Flink.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiokafka import TopicPartition

REFRESH_S = 1.0
"""Longest the other partitions' watermarks may be stale (shorter for short timeouts)."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Idleness:
    """Which partitions are idle and how far their watermarks may be raised."""

    def __init__(self, timeout_ms: int, fields: list[str]) -> None:
        self.timeout_ms = timeout_ms
        self.fields = fields
        """Every input partition's checkpoint field (`{topic}:{partition}`)."""
        self.refresh_s = min(REFRESH_S, timeout_ms / 4000)
        self.marks: dict[str, tuple[int | None, int | None]] = {}
        """field -> (watermark, last seen ms) as last read from the checkpoint hash."""
        self.read_at = 0.0
        """When (monotonic) `marks` was read."""
        self.active_ms: dict[TopicPartition, int] = {}
        """When this worker's own partitions last brought events (or were assigned)."""
        self._checked = 0.0

    def stale(self) -> bool:
        return time.monotonic() - self.read_at >= self.refresh_s

    def note_marks(self, raw: Mapping[bytes | str, bytes | str]) -> None:
        """Take the checkpoint hash (HGETALL) as the other partitions' state."""
        values = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        marks: dict[str, tuple[int | None, int | None]] = {}
        for f in self.fields:
            wm, seen = values.get(f"{f}:wm"), values.get(f"{f}:seen")
            marks[f] = (
                None if wm is None else int(float(wm)),
                None if seen is None else int(seen),
            )
        self.marks = marks
        self.read_at = time.monotonic()

    def note_active(self, tp: TopicPartition) -> None:
        self.active_ms[tp] = now_ms()

    def forget(self, tp: TopicPartition) -> None:
        self.active_ms.pop(tp, None)

    def raises(
        self, watermarks: dict[TopicPartition, int | None], skip: set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The owned partitions (of `watermarks`, theirs as the worker holds them; not in
        `skip`) that are idle and behind the partitions with events, with the watermark
        each is raised to. Checked at most every refresh interval."""
        clock = time.monotonic()
        if not self.marks or clock - self._checked < self.refresh_s:
            return {}
        self._checked = clock
        now = now_ms()
        mine = {f"{tp.topic}:{tp.partition}": tp for tp in watermarks}
        active: list[int] = []
        known: list[int] = []
        for f in self.fields:
            wm, seen = self.marks.get(f, (None, None))
            tp = mine.get(f)
            if tp is not None:  # our own view is fresher than the hash
                wm, seen = watermarks[tp], self.active_ms.get(tp)
            if wm is None:
                continue
            known.append(wm)
            if seen is not None and now - seen < self.timeout_ms:
                active.append(wm)
        # Every partition idle (a replay that ended, say): partitions that never had a
        # watermark stop holding the others, which keep theirs.
        if not (active or known):
            return {}
        target = min(active or known)
        out: dict[TopicPartition, int] = {}
        for tp, wm in watermarks.items():
            if tp in skip or now - self.active_ms.get(tp, now) < self.timeout_ms:
                continue
            if wm is None or wm < target:
                out[tp] = target
        return out
