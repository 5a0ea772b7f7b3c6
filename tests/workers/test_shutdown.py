"""A bounded stop (issue #15): `flowmill worker` processes (a fileReplay source and a
window step with a Redis sink) get SIGTERM while the broker and Redis are down: frozen
with SIGSTOP, so that every flush, commit and close waits for a server that never answers
(a refused connection at least fails at once; aiokafka's stop() then retries its
reconnects for ever, as the issue saw). Each exits within its --stop-grace, naming what
was not durable. Before, neither ever exited.

Frozen rather than killed: the broker then comes back at once, where a restart after
kill -9 recovers its logs for 30 s on two busy cores (that restart, with steps running,
is test_faults_kafka_transactions.py).

Durability is unchanged by abandoning: with the broker and Redis back and both workers
restarted, the topic holds every event once and every window is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill_workers.runtime.shutdown import EXIT_UNCLOSED, EXIT_UNFLUSHED
from tests.harness.waiting import unique, wait_for
from tests.workers.harness import consume_all
from tests.workers.test_faults_kafka_transactions import own_broker
from tests.workers.test_faults_redis_state import (
    EVENTS,
    PARTITIONS,
    RedisProcess,
    events,
    expected,
    own_redis,
    processed,
    step,
    wait_exact,
)

__all__ = ["own_broker", "own_redis"]  # fixtures, used by name

GRACE = 4.0
MARGIN = 3.0
"""Beyond the grace: the deadline thread's wake-up, the log line and the exit, on two
busy cores."""
RATE = 2_000
"""Events per second of the replay: it is still writing when the broker dies."""


def manifest(tmp_path: Path, name: str) -> Path:
    data = tmp_path / "events.jsonl"
    data.write_text("".join(json.dumps({**e, "i": i}) + "\n" for i, e in enumerate(events())))
    doc = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "topics": [{"name": name, "partitions": PARTITIONS}],
            "sources": [
                {
                    "name": "replay",
                    "to": name,
                    "key": "k",
                    "fileReplay": {"path": str(data), "format": "jsonl", "rate": RATE},
                }
            ],
            "steps": [step(name)],
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Workers:
    """The source's and the step's `flowmill worker` processes, logging to files."""

    def __init__(self, tmp_path: Path, path: Path, bootstrap: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.path = path
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runs = 0

    def start(self, *extra: str) -> None:
        self.runs += 1
        for kind, name in (("source", "replay"), ("step", "sums")):
            argv = [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(self.path),
                    f"--{kind}", name, "--bootstrap-servers", self.bootstrap,
                    "--redis-url", self.redis_url, "--metrics-port", "0", *extra]  # fmt: skip
            if kind == "step":
                argv += ["--batch-size", "200"]
            with self.log(kind, self.runs).open("wb") as log:
                self.procs[kind] = subprocess.Popen(
                    argv, cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT
                )

    def log(self, kind: str, run: int) -> Path:
        return self.tmp_path / f"{kind}-{run}.log"

    def alive(self) -> None:
        for kind, proc in self.procs.items():
            assert proc.poll() is None, f"{kind} exited:\n{self.log(kind, self.runs).read_text()}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_sigterm_with_the_broker_and_redis_down_exits_within_the_grace(
    tmp_path: Path, own_broker: EmbeddedKafka, own_redis: RedisProcess
) -> None:
    name = unique("stop")
    path = manifest(tmp_path, name)
    own_broker.create_topics([(name, PARTITIONS)])
    bootstrap = own_broker.bootstrap_servers
    workers = Workers(tmp_path, path, bootstrap, own_redis.url)
    assert own_redis.proc is not None
    redis_pid = own_redis.proc.pid
    assert own_broker._proc is not None
    broker_pid = own_broker._proc.pid
    try:
        workers.start("--stop-grace", str(GRACE))
        with own_redis.client() as client:

            def midway() -> bool:
                workers.alive()
                return processed(client, name) >= EVENTS // 5

            wait_for(midway, 90, "the step to have processed a fifth of the events")
        os.kill(broker_pid, signal.SIGSTOP)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            for proc in workers.procs.values():
                proc.send_signal(signal.SIGTERM)
            for kind, proc in workers.procs.items():
                left = GRACE + MARGIN - (time.monotonic() - stopped_at)
                try:
                    code = proc.wait(max(0.1, left))
                except subprocess.TimeoutExpired:
                    raise AssertionError(
                        f"{kind} still running {GRACE + MARGIN:g}s after SIGTERM:\n"
                        + workers.log(kind, 1).read_text()[-3000:]
                    ) from None
                text = workers.log(kind, 1).read_text()
                # Both wait for a server at the end (the step's offsets, the producer's
                # close), so both run out of time, and say what they abandon.
                assert code in (EXIT_UNFLUSHED, EXIT_UNCLOSED), f"{kind} exit {code}:\n{text}"
                assert f"did not stop within {GRACE:g}s" in text, text[-3000:]
                if code == EXIT_UNFLUSHED:
                    assert "not durable, read again from the last durable position" in text
        finally:
            os.kill(broker_pid, signal.SIGCONT)
            os.kill(redis_pid, signal.SIGCONT)

        # Everything back: the restarted workers replay what was abandoned, exactly once.
        workers.start()
        want = expected(events())
        with own_redis.client() as client:
            wait_exact(
                client, name, want, 180, "every window exact", interval=0.5, check=workers.alive
            )
    finally:
        workers.stop()
    records = _read_topic(bootstrap, name)
    ids = Counter(json.loads(r.value)["i"] for r in records)
    assert sorted(ids) == list(range(EVENTS)), "events missing from the topic"
    assert max(ids.values()) == 1, "events written twice to the topic"


def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    import asyncio

    return asyncio.run(consume_all(bootstrap, topic, EVENTS, timeout=60, settle=1.0))


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_sigterm_while_the_worker_starts_is_a_clean_stop(
    tmp_path: Path, kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis
) -> None:
    """A stop can come while the worker still imports (seconds on a busy node: a pod deleted
    as it starts, a test stopping a worker it just restarted). The worker notes the signal
    from its first moment and exits 0 once it can, having read nothing; before, the signal
    killed it (exit -15 in a chain test's stop)."""
    name = unique("early")
    path = manifest(tmp_path, name)
    kafka_broker.create_topics([(name, PARTITIONS)])
    workers = Workers(tmp_path, path, kafka_broker.bootstrap_servers, redis_server.url)
    try:
        workers.start()
        for kind, proc in workers.procs.items():
            wait_for(lambda p=proc: _catches_sigterm(p.pid), 30, f"the {kind} to catch SIGTERM",
                     interval=0.005)  # fmt: skip
            proc.send_signal(signal.SIGTERM)
        for kind, proc in workers.procs.items():
            code = proc.wait(30)
            text = workers.log(kind, 1).read_text()
            assert code == 0, f"{kind} exit {code}:\n{text}"
            assert "stop requested while starting; nothing was read" in text, text
    finally:
        workers.stop()
