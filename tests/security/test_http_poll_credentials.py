"""httpPoll credentials: a header from a Secret (headersFrom, read from the variable the
operator sets) reaches the feed, and a failing poll's log shows the URL redacted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from flowmill.local.kafka import EmbeddedKafka
from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill.redact import MASK
from flowmill.spec.launch import http_header_env
from tests.harness.waiting import unique
from tests.workers.test_sources_support import consume, running, source_pipeline

TOKEN = "Bearer feed-token-8Kq2"
QUERY_TOKEN = "q-token-55Zx"


@asynccontextmanager
async def feed() -> AsyncIterator[tuple[list[str | None], int]]:
    """/ok answers a one-element array to a request with TOKEN, 401 otherwise; /fail
    always 500. Records each request's Authorization header."""
    seen: list[str | None] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != TOKEN:
            return web.Response(status=401)
        body = orjson.dumps({"last_updated": 1, "data": [{"id": "a"}]})
        return web.Response(body=body, content_type="application/json")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/fail", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield seen, port
    finally:
        await runner.cleanup()


async def test_header_from_secret_reaches_the_feed(
    kafka_broker: EmbeddedKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("hdr")
    topic = f"{name}-out"
    kafka_broker.create_topics([(topic, 1)])
    async with feed() as (seen, port):
        poll = {
            "url": f"http://127.0.0.1:{port}/ok",
            "interval": "100ms",
            "explode": "data",
            "headersFrom": {"Authorization": {"name": "feed", "key": "header"}},
        }
        pipeline = source_pipeline(
            name, [(topic, 1)], [{"name": "feed", "to": topic, "httpPoll": poll}]
        )
        monkeypatch.setenv(http_header_env("feed", "Authorization"), TOKEN)
        async with running(pipeline, "feed", kafka_broker.bootstrap_servers):
            records = await consume(kafka_broker.bootstrap_servers, topic, 1)
    assert [orjson.loads(r.value) for r in records] == [{"id": "a", "last_updated": 1}]
    assert seen and set(seen) == {TOKEN}


async def test_failed_poll_logs_the_url_redacted(
    kafka_broker: EmbeddedKafka, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("redact")
    topic = f"{name}-out"
    kafka_broker.create_topics([(topic, 1)])
    async with feed() as (_, port):
        url = f"http://reader@127.0.0.1:{port}/fail?token={QUERY_TOKEN}&page=1"
        poll = {"url": url, "interval": "100ms"}
        pipeline = source_pipeline(
            name, [(topic, 1)], [{"name": "feed", "to": topic, "httpPoll": poll}]
        )
        with caplog.at_level(logging.WARNING, logger="flowmill.source.http"):
            async with running(pipeline, "feed", kafka_broker.bootstrap_servers) as source:
                await source.until(lambda: "poll of" in caplog.text, 15)
    warning = next(r.getMessage() for r in caplog.records if "poll of" in r.getMessage())
    assert QUERY_TOKEN not in caplog.text
    assert f"http://reader@127.0.0.1:{port}/fail?token={MASK}&page=1" in warning
    assert "HTTP 500" in warning


def test_credentials_in_the_spec_are_refused() -> None:
    def poll(**fields: object) -> dict[str, object]:
        return {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "p"},
            "spec": {
                "topics": [{"name": "t"}],
                "sources": [{"name": "s", "to": "t", "httpPoll": {"url": "http://h/x", **fields}}],
            },
        }

    cases = {
        "url": {"url": "https://user:pw-in-url-1@h/x"},
        "headers": {"headers": {"Authorization": "Bearer in-header-2"}},
    }
    for field, fields in cases.items():
        with pytest.raises(PipelineInvalid) as caught:
            parse_pipeline(poll(**fields))
        [error] = caught.value.errors
        assert error.path == f"spec.sources[0].httpPoll.{field}"
        assert "Secret" in error.message and "headersFrom" in error.message
        assert "pw-in-url-1" not in str(caught.value) and "in-header-2" not in str(caught.value)
