"""Bytewax: fold_window over a one-minute tumbling window (count and sum of fares), event
time from the value, reading the topic to its end (tail=False), so every window closes
when the input ends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from _common import MINUTE_MS, Timer, config, emit, window_key
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

ALIGN = datetime(2020, 1, 1, tzinfo=UTC)


def main() -> None:
    cfg = config()
    timer = Timer()
    seen = [0]

    def decode(message: Any) -> dict[str, Any]:
        timer.begin()
        seen[0] += 1
        return json.loads(message.value)

    def fold(acc: list[float], event: dict[str, Any]) -> list[float]:
        acc[0] += 1
        acc[1] += event["fare"]
        return acc

    def merge(a: list[float], b: list[float]) -> list[float]:
        return [a[0] + b[0], a[1] + b[1]]

    flow = Dataflow("bench")
    messages = op.input(
        "in",
        flow,
        KafkaSource(
            [cfg["bootstrap"]],
            [cfg["topic"]],
            tail=False,
            add_config={"group.id": cfg["group"]},
        ),
    )
    events = op.map("decode", messages, decode)
    keyed = op.key_on("key", events, lambda e: e["region_id"])
    clock = win.EventClock(
        lambda e: datetime.fromtimestamp(e["event_time"] / 1000, UTC),
        # Four partitions are read in turns, so event times interleave out of order by
        # seconds: without this wait Bytewax drops most of them as late (flowmill's
        # watermark is per partition). At the end of the input every window closes.
        wait_for_system_duration=timedelta(minutes=5),
    )
    windower = win.TumblingWindower(length=timedelta(minutes=1), align_to=ALIGN)
    folded = win.fold_window("fold", keyed, clock, windower, lambda: [0, 0.0], fold, merge)
    out: list[Any] = []
    op.output("out", folded.down, TestingSink(out))
    run_main(flow)
    timer.stop()
    base = int(ALIGN.timestamp() * 1000)
    windows = {window_key(key, base + window_id * MINUTE_MS): acc for key, (window_id, acc) in out}
    emit(seen[0], timer, windows)


main()
