"""A Faust agent (faust-streaming) folding the events into per-(key, minute) counts and
sums in memory: no sink and no table, the cheapest thing an agent can do. Faust never
ends a stream, so the agent stops the process once it has seen every event.

    python faust_agent.py CONFIG_JSON   (runs `worker -l warn` itself)
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from typing import Any

import faust
from _common import MINUTE_MS, Timer, config, emit, window_key

CFG = config()
sys.argv = [sys.argv[0], "worker", "-l", "warn"]

app = faust.App(
    CFG["group"],
    broker=f"kafka://{CFG['bootstrap']}",
    value_serializer="json",
    topic_allow_declare=False,
    topic_disable_leader=True,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(CFG["topic"])
windows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
state = {"seen": 0}
timer = Timer()


def fold(event: dict[str, Any]) -> None:
    ts = event["event_time"]
    acc = windows[window_key(event["region_id"], ts - ts % MINUTE_MS)]
    acc[0] += 1
    acc[1] += event["fare"]


@app.agent(source)
async def aggregate(stream: faust.Stream) -> None:
    async for event in stream:
        timer.begin()
        fold(event)
        state["seen"] += 1
        if state["seen"] >= CFG["total"]:
            timer.stop()
            emit(state["seen"], timer, dict(windows))
            sys.stdout.flush()
            os._exit(0)


if __name__ == "__main__":
    app.main()
