"""Session tables served by the API: a key's sessions, its current (open) session, the
table's recent and top sessions, each with `final` and the watermark; the values are
computed here from the events (tests/workers/test_session_windows.py's model)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import PipelineInvalid, parse_pipeline
from flowmill.spec import Pipeline
from tests.api.harness import ApiServer, serve
from tests.harness.waiting import unique
from tests.workers.harness import create_topics, pipeline, produce, run_step
from tests.workers.test_session_windows import (
    MIN,
    accepted,
    expected_sessions,
    session_step,
    viewing,
)

GAP, LATENESS = 30 * MIN, 45 * MIN


@dataclass
class Sessions:
    pipeline: Pipeline
    want: dict[tuple[str, int], dict[str, Any]]
    watermark: int

    def base(self) -> str:
        return f"/pipelines/{self.pipeline.name}/tables/views"

    def final(self, s: dict[str, Any]) -> bool:
        return s["last"] + GAP + LATENESS <= self.watermark

    def of(self, user: str) -> list[tuple[int, dict[str, Any]]]:
        return sorted((start, s) for (u, start), s in self.want.items() if u == user)


async def _fill(kafka: EmbeddedKafka, redis_url: str) -> Sessions:
    name = unique("apisess")
    topic = name
    p = pipeline(
        name,
        [{"name": topic, "partitions": 2}],
        [
            session_step("views", topic, allowedLateness="45m"),
            {
                "name": "minutely",
                "from": topic,
                "keyBy": "user",
                "window": {"size": "1m", "eventTime": "ts"},
                "aggregate": {"views": "count"},
                "sink": {"redis": {"table": "minutely"}},
            },
        ],
    )
    create_topics(kafka, p)
    events = viewing(600, seed=31, users=6)
    arrivals = {q: [e for e in events if e["id"] % 2 == q] for q in (0, 1)}
    for q, evs in arrivals.items():
        await produce(kafka.bootstrap_servers, topic, evs, partition=q)
    await run_step(p, "sessions", kafka.bootstrap_servers, redis_url, len(events), batch_size=50)
    kept = accepted(arrivals, LATENESS)
    # The table's watermark: the smallest partition's largest event time.
    watermark = min(max(e["ts"] for e in kept if e["id"] % 2 == q) for q in (0, 1))
    return Sessions(p, expected_sessions(kept, GAP), watermark)


@pytest.fixture(scope="module")
def sessions(kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis) -> Sessions:
    if not redis_server.running:
        redis_server.start()
    return asyncio.run(_fill(kafka_broker, redis_server.url))


@pytest.fixture(scope="module")
def client(sessions: Sessions, redis_server: EmbeddedRedis) -> Iterator[httpx.Client]:
    server: ApiServer
    with (
        serve([sessions.pipeline], redis_server.url) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        yield http


def assert_session(got: dict[str, Any], user: str, start: int, want: Any, s: Sessions) -> None:
    assert (got["key"], got["start"]) == (user, start)
    assert got["last_event"] == want["last"] and got["end"] == want["last"] + GAP
    assert got["final"] is s.final(want), got
    assert got["watermark"] == s.watermark
    values = got["values"]
    for name in ("views", "shows", "shortest", "longest"):
        assert values[name] == want[name], (name, got)
    for name in ("minutes", "avg_minutes"):
        assert math.isclose(values[name], want[name], rel_tol=1e-9), (name, got)


def test_a_keys_sessions_current_and_latest(client: httpx.Client, sessions: Sessions) -> None:
    users = sorted({u for u, _ in sessions.want})
    assert len(users) == 6
    for user in users:
        expected = sessions.of(user)
        r = client.get(f"{sessions.base()}/keys/{user}/windows", params={"limit": 1000})
        assert r.status_code == 200, r.text
        got = r.json()["windows"]
        assert len(got) == len(expected)
        for g, (start, want) in zip(got, expected, strict=True):
            assert_session(g, user, start, want, sessions)

        current = client.get(f"{sessions.base()}/keys/{user}/windows/current").json()
        assert_session(current, user, *expected[-1], sessions)

        finals = [(st, w) for st, w in expected if sessions.final(w)]
        opens = [(st, w) for st, w in expected if not sessions.final(w)]
        latest = client.get(
            f"{sessions.base()}/keys/{user}/windows/latest", params={"n": 3, "final": "true"}
        ).json()["windows"]
        assert [w["start"] for w in latest] == [st for st, _ in finals[-3:]]
        r = client.get(f"{sessions.base()}/keys/{user}/windows/current", params={"final": "false"})
        if opens:
            assert_session(r.json(), user, *opens[-1], sessions)
        else:
            assert r.status_code == 404 and "no open window" in r.json()["detail"]
    # The watermark leaves some sessions open, and most final.
    assert any(not sessions.final(w) for w in sessions.want.values())
    assert sum(sessions.final(w) for w in sessions.want.values()) > len(sessions.want) / 2


def test_recent_and_top_sessions(client: httpx.Client, sessions: Sessions) -> None:
    everything = sorted(sessions.want.items(), key=lambda kv: (-kv[1]["last"], kv[0]))
    r = client.get(f"{sessions.base()}/sessions/recent", params={"n": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["watermark"] == sessions.watermark
    assert [(s["key"], s["start"]) for s in body["sessions"]] == [k for k, _ in everything[:7]]

    closed = [(k, w) for k, w in sessions.want.items() if sessions.final(w)]
    closed.sort(key=lambda kv: (-kv[1]["minutes"], kv[0]))
    r = client.get(
        f"{sessions.base()}/sessions/top", params={"by": "minutes", "n": 5, "final": "true"}
    )
    assert r.status_code == 200, r.text
    top = r.json()["sessions"]
    assert [(s["key"], s["start"]) for s in top] == [k for k, _ in closed[:5]]
    for rank, (s, (key, want)) in enumerate(zip(top, closed, strict=False), 1):
        assert s["rank"] == rank and s["final"] is True
        assert math.isclose(s["score"], want["minutes"], rel_tol=1e-9)
        assert_session(s, key[0], key[1], want, sessions)

    since = everything[10][1]["last"] + GAP
    r = client.get(
        f"{sessions.base()}/sessions/top",
        params={"by": "views", "n": 1000, "order": "asc", "since": since},
    )
    recent = [kv for kv in sessions.want.items() if kv[1]["last"] + GAP >= since]
    assert len(r.json()["sessions"]) == len(recent)
    assert [s["score"] for s in r.json()["sessions"]] == sorted(w["views"] for _, w in recent)


def test_session_table_errors_name_what_is_wrong(client: httpx.Client, sessions: Sessions) -> None:
    r = client.get(f"{sessions.base()}/windows/current/top")
    assert r.status_code == 404 and "session windows" in r.json()["detail"]
    r = client.get(f"{sessions.base()}/sessions/top", params={"by": "nope"})
    assert r.status_code == 422 and r.json()["parameters"][0]["name"] == "by"
    r = client.get(f"{sessions.base()}/sessions/recent", params={"final": "maybe"})
    assert r.status_code == 422 and r.json()["parameters"][0]["name"] == "final"
    other = f"/pipelines/{sessions.pipeline.name}/tables/minutely/sessions/recent"
    r = client.get(other)
    assert r.status_code == 404 and "not sessions" in r.json()["detail"]


@pytest.mark.parametrize(
    ("window", "field", "message"),
    [
        ({"session": {"gap": "0s"}}, "window.session.gap", "gap must be positive"),
        ({"session": {"gap": "5m", "maxDuration": "0m"}}, "window.session.maxDuration",
         "maxDuration must be positive"),
        ({"session": {"gap": "5m"}, "size": "1m"}, "window", "session window has no size"),
        ({"type": "session"}, "window", "needs session"),
        ({"type": "hopping", "size": "2m", "advance": "1m", "session": {"gap": "1m"}},
         "window", "has no session"),
        ({"session": {"gap": "5m", "timeout": "1m"}}, "window.session.timeout", "unknown field"),
    ],
)  # fmt: skip
def test_manifest_errors_name_the_field(window: dict[str, Any], field: str, message: str) -> None:
    manifest = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "bad"},
        "spec": {
            "topics": [{"name": "t"}],
            "steps": [
                {
                    "name": "s",
                    "from": "t",
                    "keyBy": "user",
                    "window": window,
                    "aggregate": {"n": "count"},
                    "sink": {"redis": {"table": "x"}},
                }
            ],
        },
    }
    with pytest.raises(PipelineInvalid) as err:
        parse_pipeline(manifest)
    text = str(err.value)
    assert f"spec.steps[0].{field}" in text and message in text, text
