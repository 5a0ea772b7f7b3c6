"""CPU per request of the API's window lookup in one process, no HTTP server or client:
the ASGI app called directly for a key's current window, with the answer in memory
(no Redis command), repeats of one request sent from their kept rendering (the fast
path's `_Kept`) against the same app with that step turned off, alternating rounds.
A bare ASGI app sending the same bytes is the floor: what is left above it is the
app's own work.

    .venv/bin/python benchmarks/api_cost.py [--requests 50000] [--rounds 6]

It starts its own Redis and fills the table as `make bench`'s API part does
(api_bench.fill). The server's part of a request (HTTP parsing, the write) is the same
for every row and is measured by bench_api's "bare ASGI app on flowmill api's server".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import api_bench  # noqa: E402

from flowmill.local.redis import EmbeddedRedis  # noqa: E402
from flowmill_api.app import create_app  # noqa: E402
from flowmill_api.settings import ApiSettings  # noqa: E402

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class _NothingKept(dict[Any, Any]):
    """Stands in for the fast path's kept answers: finds none, so every request is
    routed, parsed and (from memory) rendered."""

    def get(self, key: Any, default: Any = None) -> Any:
        return None


def _bare(body: bytes) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def _measure(redis_url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    pipeline = api_bench.bench_pipeline()
    await api_bench.fill(redis_url, pipeline)
    app: Any = create_app([pipeline], redis_url, ApiSettings.for_pipelines([pipeline]))
    path = f"/pipelines/{api_bench.PIPELINE}/tables/{api_bench.TABLE}/keys/k42/windows/current"
    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"host", b"api")], "scheme": "http",
        "http_version": "1.1", "root_path": "", "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        # Until the version subscription is up and the answer is kept.
        deadline = time.monotonic() + 10
        while True:
            sent.clear()
            await app(dict(scope), receive, send)
            if sent[0]["status"] != 200:
                raise RuntimeError(f"the lookup answered {sent[0]['status']}: {sent[1]['body']!r}")
            if app.front._kept or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if not app.front._kept:
            raise RuntimeError("the answer was never kept: is the version subscription up?")
        body = sent[1]["body"]
        kept = app.front._kept
        contenders: dict[str, tuple[App, Any]] = {
            "bare ASGI app, same bytes": (_bare(body), kept),
            "window lookup, repeats sent as kept": (app, kept),
            "window lookup, every request routed and rendered": (app, _NothingKept()),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, (target, keeping) in contenders.items():
                app.front._kept = keeping
                started = time.perf_counter()
                for _ in range(requests):
                    await target(dict(scope), receive, send)
                    sent.clear()
                times[name].append(1e6 * (time.perf_counter() - started) / requests)
        app.front._kept = kept
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    server = EmbeddedRedis()
    server.start()
    try:
        times = asyncio.run(_measure(server.url, args.requests, args.rounds))
    finally:
        server.stop()
    print(f"\nASGI app called in process; {args.requests:,} requests x {args.rounds} rounds, "
          "alternating; medians\n")  # fmt: skip
    print("| in process | us per request | rounds |\n|---|---:|---|")
    for name, values in times.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {statistics.median(values):.2f} | {rounds} |")


if __name__ == "__main__":
    main()
