"""The Faust step's stall watch (faust_step/stall.py): a worker that is ready with input
waiting and neither takes in nor commits any of it for faust.stallTimeout exits with
EXIT_STALLED, so that it is restarted; the restarted worker processes everything.

The stall is made by an agent that, the first time it runs, waits for ever on its first
event (the loop stays free, the probes answer: what a stalled Faust worker looked like,
docs/faust.md); the second time it runs normally.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port
from flowmill.spec.launch import EXIT_STALLED
from flowmill_workers.faust_step.stall import StallWatch
from tests.examples.harness import read_topic
from tests.faust.harness import faust_manifest, worker
from tests.harness.waiting import wait_for
from tests.workers.harness import produce

STALL_ONCE_APP = """\
import asyncio
from pathlib import Path

import faust

app = faust.App("stall-once", value_serializer="json")
numbers = app.topic("numbers", value_serializer="json")
doubled = app.topic("fraud-flags", value_serializer="json")  # faust_manifest's output
MARKER = Path(__file__).with_name("stalled-once")


@app.agent(numbers)
async def double(stream):
    async for value in stream:
        if not MARKER.exists():
            MARKER.touch()
            await asyncio.sleep(3600)  # stuck: nothing acknowledged, nothing committed
        await doubled.send(key=str(value["n"]), value={"n": value["n"], "twice": 2 * value["n"]})
"""
EVENTS = 300
TIMEOUT_S = 10


def test_a_stalled_worker_exits_to_be_restarted_and_the_restart_processes_everything(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "stall_once.py").write_text(STALL_ONCE_APP)
    manifest, doc = faust_manifest(
        tmp_path,
        kafka_broker,
        app="stall_once:app",
        agent="double",
        tables=[],
        code={"path": str(code)},
        stallTimeout=f"{TIMEOUT_S}s",
    )
    source, sink = (t["name"] for t in doc["spec"]["topics"])
    bootstrap = kafka_broker.bootstrap_servers
    asyncio.run(produce(bootstrap, source, [{"n": n} for n in range(EVENTS)], key_field="n"))

    first_log = tmp_path / "worker-1.log"
    first = worker(manifest, kafka_broker, free_port(), first_log, code=code)
    try:
        # Joining (10-20 s on a busy machine), then the timeout of no progress.
        code_1 = first.wait(timeout=120)
    finally:
        first.kill()
    text = first_log.read_text()
    assert (code / "stalled-once").exists(), "the agent never got its first event"
    assert code_1 == EXIT_STALLED, f"exit {code_1}:\n{text[-4000:]}"
    assert "Faust step stalled: ready with" in text, text[-4000:]
    assert f"(faust.stallTimeout {TIMEOUT_S}s)" in text
    assert read_topic(bootstrap, sink) == [], "the stalled agent sent nothing"

    second_log = tmp_path / "worker-2.log"
    second = worker(manifest, kafka_broker, free_port(), second_log, code=code)
    try:

        def everything() -> list[dict[str, int]] | None:
            got = [r["event"] for r in read_topic(bootstrap, sink)]
            return got if {e["n"] for e in got} == set(range(EVENTS)) else None

        got = wait_for(everything, 120, f"every one of the {EVENTS} events doubled")
        assert all(e["twice"] == 2 * e["n"] for e in got)
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0, second_log.read_text()[-3000:]
    assert "Faust step stalled" not in second_log.read_text(), "a working worker was stopped"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_only_no_intake_and_no_commit_while_ready_with_lag_counts_as_a_stall() -> None:
    clock = Clock()
    stalls: list[str] = []
    state = {"ready": True, "taken_in": 0.0}
    watch = StallWatch(
        10.0,
        ready=lambda: bool(state["ready"]),
        taken_in=lambda: state["taken_in"],
        on_stall=stalls.append,
        clock=clock,
    )

    def tick(seconds: float, lags: dict[int, int], committed: dict[int, int]) -> None:
        for _ in range(int(seconds / 2)):
            clock.now += 2
            watch.observe(lags, committed)

    tick(30, {0: 0, 1: 0}, {0: 5, 1: 5})
    assert stalls == [], "no lag: idle, not stalled"
    state["ready"] = False
    tick(30, {0: 7}, {0: 5})
    assert stalls == [], "not ready (joining, restoring): not stalled"
    state["ready"] = True
    lags = {0: 7, 1: 0}
    for _ in range(10):  # a slow agent: only commits move, every 4 s
        tick(4, lags, {0: 5 + int(clock.now), 1: 5})
    assert stalls == []
    for _ in range(10):  # a busy agent that takes in but commits rarely
        state["taken_in"] += 1
        tick(4, lags, {0: 5, 1: 5})
    assert stalls == []
    # The last progress was seen 2 s ago (the first of the last tick's two refreshes).
    tick(6, lags, {0: 5, 1: 5})
    assert stalls == [], "8 s without progress is under the timeout"
    tick(2, lags, {0: 5, 1: 5})
    assert len(stalls) == 1 and "7 input event(s) waiting" in stalls[0]
    assert "(partition 0: 7)" in stalls[0] and "for 10s" in stalls[0]
