"""Redis paused (SIGSTOP) under a running window step: connections stay open and
nothing is answered. Before, the step's write waited for the reply until SIGCONT and the
worker stayed ready the whole time. Now a command unanswered for --redis-timeout fails
and is retried like a refused write: `/readyz` answers 503 with the reason during the
pause, and after SIGCONT every window is exact (a timed-out write that Redis runs on
waking up is fenced by the checkpoint like any replay)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK, free_port
from tests.harness.waiting import unique, wait_for
from tests.workers.harness import produce
from tests.workers.test_faults_redis_state import (
    BASE_MS,
    RedisProcess,
    expected,
    own_redis,
    processed,
    step,
    wait_exact,
)

__all__ = ["own_redis"]  # a fixture, used by name

EVENTS, KEYS, MINUTES, PARTITIONS = 1_200, 8, 10, 2  # 80 windows
PAUSE_S = 8.0
REDIS_TIMEOUT_S = 1.0


def events() -> list[dict[str, Any]]:
    return [
        {"k": f"k{i % KEYS}", "t": BASE_MS + (i * MINUTES * 60_000) // EVENTS, "v": i % 89}
        for i in range(EVENTS)
    ]


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def test_a_paused_redis_makes_the_step_unready_then_every_window_is_exact(
    tmp_path: Path, kafka_broker: EmbeddedKafka, own_redis: RedisProcess
) -> None:
    name = unique("pause")
    kafka_broker.create_topics([(name, PARTITIONS)])
    doc = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {"topics": [{"name": name, "partitions": PARTITIONS}], "steps": [step(name)]},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    log = tmp_path / "step.log"
    bootstrap = kafka_broker.bootstrap_servers
    evs = events()
    first, second = evs[: EVENTS // 2], evs[EVENTS // 2 :]
    assert own_redis.proc is not None
    redis_pid = own_redis.proc.pid
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flowmill.cli", "worker", "--pipeline", str(path),
             "--step", "sums", "--bootstrap-servers", bootstrap, "--redis-url", own_redis.url,
             "--metrics-port", str(port), "--batch-size", "50",
             "--redis-timeout", str(REDIS_TIMEOUT_S)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alive() -> None:
        assert worker.poll() is None, f"the step exited:\n{log.read_text()[-3000:]}"

    paused = False
    try:
        asyncio.run(produce(bootstrap, name, first, key_field="k"))
        with own_redis.client() as client:

            def first_half() -> bool:
                alive()
                return processed(client, name) == len(first)

            wait_for(first_half, 60, "the first half of the events in Redis")
        assert readyz(port)[0] == 200

        os.kill(redis_pid, signal.SIGSTOP)
        paused = True
        paused_at = time.monotonic()
        asyncio.run(produce(bootstrap, name, second, key_field="k"))

        def unready() -> tuple[int, str] | None:
            alive()
            got = readyz(port)
            return got if got[0] == 503 else None

        _, body = wait_for(unready, PAUSE_S - 1, "/readyz 503 while Redis is paused")
        unready_after = time.monotonic() - paused_at
        assert "Redis refuses writes" in body and "Timeout" in body, body
        # Still unready (and alive) at the end of the pause: retried, not given up.
        wait_for(lambda: time.monotonic() - paused_at >= PAUSE_S, PAUSE_S + 1, "the pause")
        alive()
        assert readyz(port)[0] == 503
        os.kill(redis_pid, signal.SIGCONT)
        paused = False
        print(f"\n[redis pause] /readyz 503 {unready_after:.1f}s into an {PAUSE_S:g}s pause")

        want = expected(evs)
        with own_redis.client() as client:
            wait_exact(
                client,
                name,
                want,
                60,
                "every window exact after SIGCONT",
                interval=0.2,
                check=alive,
            )
            assert processed(client, name) == EVENTS
        wait_for(lambda: readyz(port)[0] == 200, 15, "/readyz 200 again")
        assert len(want) == KEYS * MINUTES
        text = log.read_text()
        assert "Redis refuses writes (retrying; unready meanwhile)" in text, text[-3000:]
        assert "Redis accepts writes again" in text, text[-3000:]
    finally:
        if paused:
            os.kill(redis_pid, signal.SIGCONT)
        worker.terminate()
        worker.wait(30)
