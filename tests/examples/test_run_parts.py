"""The parts of `flowmill run`, without a broker: what it starts, how it restarts and
stops children, what the status shows, and the local GBFS feed."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flowmill.manifest import load_pipeline
from flowmill.run.gbfs_server import GbfsFeed, GbfsServer
from flowmill.run.plan import ChildSpec, Connections, children_of
from flowmill.run.stats import Rates, parse_metrics
from flowmill.run.status_table import RowStatus, RunStatus, plain, render
from flowmill.run.supervisor import Supervisor, backoff
from flowmill.spec import ENV_BOOTSTRAP_SERVERS, ENV_REDIS_URL, all_topics, changelog_topic
from tests.examples.harness import EXAMPLES
from tests.examples.processes import alive

CONN = Connections("127.0.0.1:1", "redis://127.0.0.1:1/0")
FEED = EXAMPLES / "data" / "citibike"


def test_every_example_is_a_valid_local_pipeline() -> None:
    # Not the `flowmill test` files beside them (*.test.yaml).
    manifests = [p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".test.yaml")]
    for path in sorted(manifests):
        pipeline = load_pipeline(path)
        # Local runs leave the cluster settings out; the operator adds them.
        assert pipeline.spec.kafka.bootstrap_servers is None and pipeline.spec.kafka.cluster is None
        assert pipeline.spec.redis.url is None and pipeline.spec.redis.secret_ref is None
    assert {p.stem for p in manifests} == {
        "citibike", "smartcity", "streamlytics", "streampulse", "trip-fraud", "trips",
    }  # fmt: skip


def test_children_and_their_commands() -> None:
    pipeline = load_pipeline(EXAMPLES / "trips.yaml")
    children = children_of(pipeline)
    assert [c.label for c in children] == [
        "source/trip-start", "source/trip-end",
        "step/complete", "step/trip-records", "step/daily-kpis", "api",
    ]  # fmt: skip
    worker = children[2].argv(Path("/m.yaml"), CONN, 9500)
    assert worker[:3] == [sys.executable, "-m", "flowmill.cli"]
    assert worker[3:] == [
        "worker", "--pipeline", "/m.yaml", "--step", "complete",
        "--bootstrap-servers", CONN.bootstrap_servers, "--metrics-port", "9500",
    ]  # fmt: skip
    api = children[-1].argv(Path("/m.yaml"), CONN, 8000)
    assert api[3:] == ["api", "--pipeline", "/m.yaml", "--port", "8000"]
    # The Redis URL may carry a password: the environment has it, argv (ps) never.
    assert children[2].env(CONN) == {ENV_REDIS_URL: CONN.redis_url}
    # The API reads Kafka too (the health view's topic sizes and dead letters).
    assert children[-1].env(CONN) == {
        ENV_REDIS_URL: CONN.redis_url,
        ENV_BOOTSTRAP_SERVERS: CONN.bootstrap_servers,
    }
    assert [c.label for c in children_of(pipeline, with_api=False)][-1] == "step/daily-kpis"


def test_topics_include_the_join_changelog() -> None:
    topics = {t.name: t for t in all_topics(load_pipeline(EXAMPLES / "trips.yaml"))}
    changelog = topics[changelog_topic("trips", "complete")]
    assert changelog.partitions == topics["trip-end"].partitions == 3
    assert changelog.config == {"cleanup.policy": "compact"}
    assert changelog.step == "complete"


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 5, 6, 10)] == [1, 2, 4, 8, 16, 30, 30]


def test_metrics_and_rates() -> None:
    from prometheus_client import generate_latest

    from flowmill_workers.runtime.metrics import WorkerMetrics

    m = WorkerMetrics("p", "s")  # what a worker serves at /metrics
    m.labels(m.events_in).inc(120)
    m.labels(m.events_failed).inc(3)
    m.lag("t", 0, 5)
    m.lag("t", 1, 7)
    sample = parse_metrics(generate_latest(m.registry).decode())
    assert (sample.events_in, sample.failed, sample.lag, sample.events_out) == (120, 3, 12, 0)
    rates = Rates()
    assert rates.add(0.0, 0, 0) == (0.0, 0.0)
    assert rates.add(2.0, 100, 50) == (50.0, 25.0)
    # A restarted worker counts from zero again: never a negative rate.
    assert rates.add(3.0, 10, 5) == (0.0, 0.0)


def test_status_renders_as_a_table_and_a_line() -> None:
    status = RunStatus(
        pipeline="p",
        bootstrap_servers="127.0.0.1:9092",
        redis_url="redis://127.0.0.1:6379/0",
        api_url="http://127.0.0.1:8000",
        dashboard_url="http://127.0.0.1:8000/dashboard",
        docs_url="http://127.0.0.1:8000/docs",
        log_dir="/tmp/logs",
        rows=[
            RowStatus("source/replay", "source", "done", rate_out=40.0, events_out=2000),
            RowStatus("step/agg", "step", "ready", rate_in=39.5, events_in=1990, lag=3, dead=23),
            RowStatus("api", "api", "ready"),
        ],
    )
    assert status.all_ready
    assert plain(status) == (
        "[p] source/replay done out 40.0/s (2,000) | "
        "step/agg ready in 39.5/s (1,990) lag 3 dead 23 | api ready"
    )
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render(status))
    text = console.export_text()
    assert "dead-lettered" in text and "http://127.0.0.1:8000/dashboard" in text


@dataclass(frozen=True)
class Script(ChildSpec):
    """A child running a Python snippet instead of flowmill."""

    code: str = ""

    def argv(self, manifest: Path, conn: Connections, port: int) -> list[str]:
        return [sys.executable, "-c", self.code]


def test_a_crashing_child_is_restarted_with_backoff(tmp_path: Path) -> None:
    events: list[str] = []
    sup = Supervisor(tmp_path / "m.yaml", tmp_path, CONN, tmp_path / "logs", events.append)
    child = sup.add(Script("step", "crasher", code="import sys; print('boom'); sys.exit(3)"), 0)
    sup.start_all()
    deadline = time.monotonic() + 15
    while child.restarts < 2:
        assert time.monotonic() < deadline, events
        sup.check()
        time.sleep(0.05)
    sup.stop_all(grace=2)
    assert child.last_exit == 3 and len(child.history) == 3
    assert "step/crasher exited with code 3" in events[0] and "restarting in 1s" in events[0]
    assert "restarting in 2s" in events[2] and "boom" in events[0]


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    events: list[str] = []
    sup = Supervisor(tmp_path / "m.yaml", tmp_path, CONN, tmp_path / "logs", events.append)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ig' + 'nored', flush=True); time.sleep(60)"
    child = sup.add(Script("step", "stubborn", code=code), 0)
    sup.start_all()
    deadline = time.monotonic() + 10
    while "ignored" not in child.log_path.read_text():  # the header line shows the code
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = child.pid
    began = time.monotonic()
    sup.stop_all(grace=1)
    assert time.monotonic() - began < 5
    assert pid is not None and not alive(pid)
    assert any("did not stop within 1s; killing it" in e for e in events), events
    sup.check()  # a stopped supervisor restarts nothing
    assert child.restarts == 0


def test_gbfs_feed_is_deterministic_and_consistent() -> None:
    a, b = GbfsFeed(FEED, started=1_000), GbfsFeed(FEED, started=1_000)
    capacity = {s["station_id"]: s["capacity"] for s in a.config.stations}
    seen = set()
    for k in range(20):
        now = 1_000 + k * a.config.period + 0.5
        doc = a.document("station_status", "http://x", now=now)
        assert doc == b.document("station_status", "http://x", now=now)
        assert doc["last_updated"] == 1_000 + k * a.config.period
        for s in doc["data"]["stations"]:
            parts = (
                s["num_bikes_available"] + s["num_bikes_disabled"]
                + s["num_docks_available"] + s["num_docks_disabled"]
            )  # fmt: skip
            assert parts == capacity[s["station_id"]]
            assert 0 <= s["num_ebikes_available"] <= s["num_bikes_available"]
            assert s["last_reported"] <= doc["last_updated"]
        seen.add(json.dumps(doc["data"]))
    assert len(seen) == 20  # it changes over time


def test_gbfs_feed_stops_changing_after_its_snapshots(tmp_path: Path) -> None:
    feed = json.loads((FEED / "feed.json").read_text())
    (tmp_path / "feed.json").write_text(json.dumps({**feed, "period": 5, "snapshots": 3}))
    gbfs = GbfsFeed(tmp_path, started=0)
    last = gbfs.document("station_status", "", now=10.0)
    assert last["last_updated"] == 10
    assert gbfs.document("station_status", "", now=1_000.0) == last


def test_gbfs_server_serves_the_feeds_at_any_prefix() -> None:
    server = GbfsServer(FEED, "127.0.0.1", 0)
    server.start()
    try:
        assert server.feed.timeline is None  # the clock starts at the first status request
        with httpx.Client(base_url=server.url, trust_env=False) as http:
            discovery = http.get("/gbfs/en/gbfs.json").json()
            urls = {f["name"]: f["url"] for f in discovery["data"]["en"]["feeds"]}
            assert urls["station_status"] == f"{server.url}/gbfs/en/station_status.json"
            info = http.get(urls["station_information"]).json()["data"]["stations"]
            assert len(info) == len(server.feed.config.stations) == 24
            assert server.feed.timeline is None  # only station_status starts it
            status = http.get(urls["station_status"]).json()
            assert status["ttl"] == server.feed.config.period
            assert http.get("/gbfs/en/free_bike_status.json").status_code == 404
        assert server.feed.timeline is not None
    finally:
        server.stop()


def test_run_refuses_a_local_feed_nobody_polls(tmp_path: Path) -> None:
    from flowmill.run import LocalRun, RunFailed

    text = (EXAMPLES / "citibike.yaml").read_text().replace("127.0.0.1:8917", "example.com")
    (tmp_path / "citibike.yaml").write_text(text)
    run = LocalRun(tmp_path / "citibike.yaml", bootstrap_servers="x:1", redis_url="redis://x:1/0")
    with pytest.raises(RunFailed, match="no httpPoll source polls"):
        run._start_gbfs()


def test_run_fails_fast_on_a_busy_api_port(tmp_path: Path) -> None:
    import socket

    from flowmill.run import LocalRun, RunFailed

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = LocalRun(
            EXAMPLES / "streampulse.yaml",
            bootstrap_servers="127.0.0.1:1",
            redis_url="redis://127.0.0.1:1/0",
            api_port=port,
            data_dir=tmp_path,
        )
        began = time.monotonic()
        with pytest.raises(RunFailed, match=f"port {port} is in use"):
            run.start()
        assert time.monotonic() - began < 2  # nothing was started first
