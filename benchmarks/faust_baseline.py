"""A Faust agent doing the worker benchmark's aggregation, for comparison.

    FAUST_BROKER=kafka://127.0.0.1:9092 FAUST_TOPIC=bench-1 FAUST_EVENTS=300000 \
        .venv/bin/python benchmarks/faust_baseline.py worker -l warn

Counts, sums and maxes fares per (region, minute) in memory (no sink, no state store:
the cheapest thing a Faust agent can do), prints events/s once FAUST_EVENTS arrived,
and stops. benchmarks/worker_bench.py --faust runs it next to the other consumers.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import faust

TOPIC = os.environ.get("FAUST_TOPIC", "bench")
EVENTS = int(os.environ.get("FAUST_EVENTS", "100000"))
TAKE = int(os.environ.get("FAUST_TAKE", "0"))

app = faust.App(
    f"faust-baseline-{time.time_ns()}",
    broker=os.environ.get("FAUST_BROKER", "kafka://127.0.0.1:9092"),
    value_serializer="json",
    topic_allow_declare=False,
    topic_disable_leader=True,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(TOPIC)
windows: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
state = {"seen": 0, "started": 0.0}


def _fold(event: dict) -> None:
    ts = event["event_time"]
    acc = windows[(event["region_id"], ts - ts % 60_000)]
    acc[0] += 1
    acc[1] += event["fare"]
    acc[2] = max(acc[2], event["fare"])


def _seen(n: int) -> None:
    if not state["started"]:
        state["started"] = time.perf_counter()
    state["seen"] += n
    if state["seen"] >= EVENTS:
        rate = EVENTS / (time.perf_counter() - state["started"])
        print(f"FAUST_RESULT {rate:.0f}", flush=True)
        os._exit(0)


@app.agent(source)
async def aggregate(stream: faust.Stream) -> None:
    if TAKE:
        # Faust's own batching: take() hands over lists of up to TAKE events.
        async for batch in stream.take(TAKE, within=0.05):
            for event in batch:
                _fold(event)
            _seen(len(batch))
    else:
        async for event in stream:
            _fold(event)
            _seen(1)


if __name__ == "__main__":
    sys.exit(app.main())
