"""Quix Streams: a tumbling window of one minute (count and sum of fares) with .final(),
event time from the value, as its docs write it; the closed windows are collected."""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

from _common import MINUTE_MS, Timer, config, emit, window_key
from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum


def main() -> None:
    cfg = config()
    app = Application(
        broker_address=cfg["bootstrap"],
        consumer_group=cfg["group"],
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-bench-"),
        loglevel="WARNING",
    )

    def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
        return int(value["event_time"])

    topic = app.topic(cfg["topic"], value_deserializer="json", timestamp_extractor=event_time)
    timer = Timer()
    seen = [0]
    windows: dict[str, list[float]] = {}

    def arrived(value: Any) -> None:
        timer.begin()
        seen[0] += 1

    def closed(value: Any, key: Any, timestamp: int, headers: Any) -> None:
        name = key.decode() if isinstance(key, bytes) else str(key)
        windows[window_key(name, int(value["start"]))] = [value["count"], value["revenue"]]
        if seen[0] >= cfg["total"]:
            timer.stop()  # again at each window the last events close

    def watchdog() -> None:
        # Quix never ends on its own: once every event arrived and no window closed for
        # a second, it is done (the timer stopped at the last closed window).
        while True:
            time.sleep(0.2)
            if seen[0] >= cfg["total"] and time.perf_counter() - last_change() > 1.0:
                app.stop()
                return

    def last_change() -> float:
        return (timer.started or 0.0) + timer.seconds

    sdf = app.dataframe(topic)
    sdf = sdf.update(arrived)
    sdf = sdf.tumbling_window(duration_ms=MINUTE_MS).agg(count=Count(), revenue=Sum("fare"))
    sdf = sdf.final()
    sdf = sdf.update(closed, metadata=True)
    threading.Thread(target=watchdog, daemon=True).start()
    app.run()
    emit(seen[0], timer, windows)


main()
