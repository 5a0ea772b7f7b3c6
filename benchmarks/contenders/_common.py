"""What every contender of benchmarks/bench.py shares (standalone: the peers' env has no
flowmill installed). A contender is one process: it reads its config (JSON, argv[1]),
consumes the benchmark topic from the beginning, computes what it computes, and prints
one line `BENCH_RESULT {json}`: events, seconds and CPU seconds of the timed part (from
the first record received to the last one processed), the peak RSS up to its end (not the
read-back of the windows for the check, which for flowmill copies Redis's table into the
process), and the windows it computed as
{"key|start": [count, sum of fare]} (None for the raw consumers, which only count)."""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

MINUTE_MS = 60_000


def config() -> dict[str, Any]:
    return json.loads(sys.argv[1])


class Timer:
    """Wall and CPU seconds from the first record to stop(), and the peak RSS by then."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.cpu_started = 0.0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.peak_rss_mb = 0.0

    def begin(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

    def stop(self) -> None:
        assert self.started is not None, "no record was received"
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(events: int, timer: Timer, windows: dict[str, list[float]] | None) -> None:
    result = {
        "events": events,
        "seconds": timer.seconds,
        "cpu_seconds": timer.cpu_seconds,
        "peak_rss_mb": timer.peak_rss_mb,
        "windows": windows,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def window_key(key: str, start_ms: int) -> str:
    return f"{key}|{start_ms}"
