"""The worker's probes and metrics answer from their own thread: while the event loop is
busy (a batch computed on a throttled CPU) /readyz and /metrics still answer at once, and
/healthz fails only once the loop has not run for its bound (a hung loop, which the
kubelet's liveness probe then restarts)."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import CollectorRegistry, Counter

from flowmill_workers.runtime.http import WorkerHttp


def get(port: int, path: str) -> tuple[int, str, float]:
    began = time.monotonic()
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5, trust_env=False)
    return answer.status_code, answer.text, time.monotonic() - began


async def test_probes_answer_while_the_loop_is_busy_and_healthz_tells_a_hung_loop() -> None:
    registry = CollectorRegistry()
    Counter("flowmill_probe_test", "a series to find", registry=registry).inc(3)
    http = WorkerHttp(registry, lambda: (True, "2 partition(s) assigned"), blocked_after_s=1.0)
    await http.start(0, "127.0.0.1")
    assert http.port is not None
    try:
        await asyncio.sleep(0.1)
        code, text, _ = await asyncio.to_thread(get, http.port, "/healthz")
        assert code == 200 and '"ok"' in text

        # The loop computes for 2.5 s without yielding; the probes are asked meanwhile.
        port = http.port

        def ask_while_busy() -> list[tuple[int, str, float]]:
            time.sleep(0.3)
            ready, metrics = get(port, "/readyz"), get(port, "/metrics")
            time.sleep(1.2)  # past blocked_after_s since the loop's last beat
            return [ready, metrics, get(port, "/healthz")]

        asked = asyncio.get_running_loop().run_in_executor(None, ask_while_busy)
        time.sleep(2.5)  # the busy loop is the point
        ready, metrics, health = await asked
        assert ready[0] == 200 and "2 partition(s) assigned" in ready[1]
        assert ready[2] < 1.0, f"/readyz took {ready[2]:.2f}s while the loop was busy"
        assert "flowmill_probe_test_total 3.0" in metrics[1] and metrics[2] < 1.0
        assert health[0] == 503 and "the event loop has not run for" in health[1], health

        await asyncio.sleep(1.5)  # the loop runs again: its beat resumes
        code, text, _ = await asyncio.to_thread(get, http.port, "/healthz")
        assert code == 200, text
        code, _, _ = await asyncio.to_thread(get, http.port, "/nothing")
        assert code == 404
    finally:
        await http.stop()
