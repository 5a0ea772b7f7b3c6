"""Two replicas of one step (one consumer group) with rebalances mid-stream (issue #15): a
second worker joins while events flow, the first is killed with SIGKILL mid-batch and a
replacement joins. A window step with a Redis sink keeps all 600 windows exact; a step
with a Kafka sink (transactional) writes each of 12,000 ids once under read_committed.
Both steps read one input and go through the scenario side by side (each its own group),
which halves the time spent starting worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import die_with_parent, tail, terminate
from flowmill.local.redis import EmbeddedRedis
from flowmill.spec import Pipeline
from flowmill.spec.topology import consumer_group
from tests.harness.waiting import unique
from tests.workers.harness import consume_all, create_topics, pipeline
from tests.workers.test_faults_redis_state import events, expected, processed, step, stored

PARTITIONS = 3
BATCH = 100
"""Small batches: a worker is inside a batch (or its transaction) at almost any moment."""
TIMEOUT = 90.0
"""A phase's bound: a killed member is dropped from its group after the consumer's session
timeout (10 s), and a worker takes seconds to start on two shared cores."""


class WorkerProcess:
    """One `flowmill worker` process of a step, logging to a file of its own so the test
    can tell when this one joined and was given partitions."""

    def __init__(
        self, manifest: Path, step: str, argv: Sequence[str], log: Path, hostname: str
    ) -> None:
        self.step = step
        self.hostname = hostname
        self.log = log
        self.killed = False
        argv = [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(manifest),
                "--step", step, "--metrics-port", "0", "--batch-size", str(BATCH), *argv]  # fmt: skip
        # Each replica is a pod of its own: its hostname names its transactional id.
        env = {**os.environ, "HOSTNAME": hostname}
        with log.open("ab") as out:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=die_with_parent(os.getpid()),  # none outlives a killed pytest
            )  # fmt: skip

    def _lines(self, marker: str) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if marker in line]

    def subscribed(self) -> bool:
        """Its consumer is about to join the group."""
        return bool(self._lines("Subscribed to topic"))

    def assignments(self) -> int:
        """How many times this worker was assigned partitions (each rebalance is one)."""
        return len(self._lines(f"step {self.step} assigned ["))

    def owns_partitions(self) -> bool:
        last = self._lines(f"step {self.step} assigned [")
        return bool(last) and not last[-1].endswith("assigned []")

    def alive(self) -> None:
        assert self.proc.poll() is None, (
            f"worker {self.log.stem} exited {self.proc.returncode}:\n{tail(self.log)}"
        )

    def kill_9(self) -> None:
        self.alive()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = True

    def stop(self) -> int:
        """SIGTERM; the worker's exit code (0 when it finished its batch and closed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            terminate(self.proc, grace=1)


class Workers:
    """Worker processes of one Pipeline started by a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.manifest = tmp_path / "pipeline.yaml"
        self.argv: list[str] = []
        self.started: list[WorkerProcess] = []

    def use(self, p: Pipeline, *argv: str) -> Workers:
        """Run workers of `p` with these flags (brokers, Redis)."""
        self.manifest.write_text(yaml.safe_dump(p.to_manifest()))
        self.argv = list(argv)
        return self

    def start(self, step: str, restarting: WorkerProcess | None = None) -> WorkerProcess:
        """A new replica (pod), or the container of `restarting` started again in its pod
        (same hostname, so its transactional id fences the killed one's transaction)."""
        log = self.tmp_path / f"{step}-{len(self.started)}.log"
        hostname = restarting.hostname if restarting else log.stem
        worker = WorkerProcess(self.manifest, step, self.argv, log, hostname)
        self.started.append(worker)
        return worker

    def all_alive(self) -> None:
        """No worker the test did not kill has exited (a crash would pass unseen)."""
        for worker in self.started:
            if not worker.killed:
                worker.alive()

    def stop_all(self) -> None:
        for worker in self.started:
            terminate(worker.proc, grace=5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Every worker a test starts is stopped at its end, whatever happened."""
    started = Workers(tmp_path)
    yield started
    started.stop_all()


class Feeder:
    """Sends a list of events in order, in small chunks, so a phase of the test can keep
    events flowing until a condition holds."""

    def __init__(
        self, bootstrap: str, topic: str, evs: list[dict[str, Any]], key: str, workers: Workers
    ) -> None:
        self.topic, self.evs, self.key, self.workers = topic, evs, key, workers
        self.sent = 0
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True
        )

    async def __aenter__(self) -> Feeder:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, n: int) -> None:
        batch = self.evs[self.sent : self.sent + n]
        futures = [
            await self.producer.send(
                self.topic, json.dumps(e).encode(), key=str(e[self.key]).encode()
            )
            for e in batch
        ]
        await asyncio.gather(*futures)
        self.sent += len(batch)

    async def send_until(
        self, done: Callable[[], bool], what: str, limit: int = 0, timeout: float = TIMEOUT
    ) -> None:
        """Send events at about 400/s (at most `limit` in all) until done(), or just wait
        for it once they are sent; every worker not killed must stay up meanwhile."""
        budget = min(len(self.evs), self.sent + limit)
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(done):
            self.workers.all_alive()
            if self.sent < budget:
                await self.send(min(20, budget - self.sent))
            # A pace, not a wait for something: events keep flowing through the phase.
            await asyncio.sleep(0.05)
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"


def replicas_with_rebalances(
    feeder: Feeder, workers: Workers, progress: dict[str, Callable[[], int]]
) -> Callable[[], Awaitable[None]]:
    """The scenario, for each step at once (one worker process per step and replica):
    replica 1 alone; replica 2 joins while events flow (the group rebalances, replica 1
    gives up partitions mid-stream); replica 1 is killed with SIGKILL while both are busy and
    restarted (in its pod) while events flow; everything is consumed and both stop cleanly."""
    total = len(feeder.evs)
    steps = list(progress)

    def everywhere(done: Callable[[str], bool]) -> Callable[[], bool]:
        return lambda: all(done(s) for s in steps)

    async def run() -> None:
        first = {s: workers.start(s) for s in steps}
        await feeder.send(total // 6)
        await feeder.send_until(everywhere(lambda s: progress[s]() >= feeder.sent), "progress")
        second = {s: workers.start(s) for s in steps}
        await feeder.send_until(everywhere(lambda s: second[s].subscribed()), "replica 2")
        await feeder.send_until(
            everywhere(lambda s: second[s].owns_partitions() and first[s].assignments() >= 2),
            "the rebalance giving replica 2 partitions",
            limit=total // 4,
        )
        # Kill replica 1 once both have written since the rebalance: it is mid-stream.
        mark = {s: progress[s]() for s in steps}
        await feeder.send_until(
            everywhere(lambda s: progress[s]() >= mark[s] + 4 * BATCH), "progress of both", total
        )
        for s in steps:
            first[s].kill_9()
        third = {s: workers.start(s, restarting=first[s]) for s in steps}
        await feeder.send_until(
            everywhere(lambda s: third[s].owns_partitions()), "replica 1 back", total // 4
        )
        await feeder.send(total - feeder.sent)
        await feeder.send_until(everywhere(lambda s: progress[s]() >= total), "every event")
        for worker in (*second.values(), *third.values()):
            assert worker.stop() == 0, tail(worker.log)

    return run


def committed_total(bootstrap: str, group: str) -> int:
    """The offsets a group committed, summed over partitions (-1 when unreachable)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        offsets = admin.list_consumer_group_offsets(group)
    except KafkaError:
        return -1  # the group's coordinator is still loading, or moving
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


async def test_two_replicas_with_rebalances_and_a_kill_9_stay_exact(
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    workers: Workers,
) -> None:
    """Both kinds of durability on one input: `sums` (windows into Redis, fenced by its
    checkpoints) and `copy` (a Kafka sink, in transactions with its offsets)."""
    name = unique("rebal")
    out = f"{name}-out"
    p = pipeline(
        name,
        [{"name": name, "partitions": PARTITIONS}, {"name": out, "partitions": PARTITIONS}],
        [step(name), {"name": "copy", "from": name, "sink": {"kafka": {"topic": out}}}],
    )
    create_topics(kafka_broker, p)
    bootstrap = kafka_broker.bootstrap_servers
    workers.use(p, "--bootstrap-servers", bootstrap, "--redis-url", redis_server.url)
    group = consumer_group(p.name, "copy")
    evs = [{**e, "id": i} for i, e in enumerate(events())]
    async with Feeder(bootstrap, name, evs, "k", workers) as feeder:
        # The input is not transactional, so offsets are dense: the Redis checkpoints
        # (each partition's next offset) and the copy's committed offsets sum to the
        # events consumed.
        scenario = replicas_with_rebalances(
            feeder,
            workers,
            {
                "sums": lambda: processed(redis_client, name),
                "copy": lambda: committed_total(bootstrap, group),
            },
        )
        await scenario()

    want = expected(evs)
    got = stored(redis_client, name)
    wrong = sorted(k for k in want if got.get(k) != want[k])
    assert wrong == [], f"{len(wrong)} of {len(want)} window(s) wrong, e.g. {wrong[:5]}"
    assert sorted(got) == sorted(want)

    records = await consume_all(bootstrap, out, len(evs), timeout=30, settle=2.0)
    ids = Counter(json.loads(r.value)["id"] for r in records)
    twice = sorted(i for i, n in ids.items() if n > 1)
    assert twice == [], f"{len(twice)} id(s) written more than once: {twice[:10]}"
    missing = sorted(set(range(len(evs))) - set(ids))
    assert missing == [], f"{len(missing)} of {len(evs)} id(s) never written: {missing[:10]}"
    assert len(records) == len(evs)
