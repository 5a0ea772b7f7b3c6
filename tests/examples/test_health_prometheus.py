"""The health view's cluster path without a cluster: a real Prometheus scrapes the workers
of a `flowmill run` at their metrics ports (what it scrapes of the pods on a cluster), an
API with FLOWMILL_API_PROMETHEUS_URL and no run status answers GET /pipelines/{p}/health
from it, and what it says agrees with each worker's own /metrics (sampled here):

- while the replay flows, the source's and the step's rates over the view's window;
- at rest, the counts (equal to those of the data file, computed here), the lag, the
  dead letters with their reasons (read by the API from Kafka), the replicas;
- the step's worker killed with SIGKILL and restarted by the run: one restart (a reset
  of its counter, as the kubelet's restart of a container shows), no pod gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import LOOPBACK
from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import load_pipeline
from flowmill.run import LocalRun
from flowmill_api import ApiSettings, create_app
from tests.api.harness import ApiServer
from tests.examples.harness import read_topic, row
from tests.harness.prometheus import PrometheusServer
from tests.harness.waiting import unique, wait_for

ROWS = 800
RATE = 40.0  # events/s: 20 s of replay, long enough to compare rates while it flows
BAD_EVERY = 25  # every 25th trip has a negative fare, which the schema refuses
SCRAPE = "1s"
WINDOW_S = 5
"""The view's rate window (FLOWMILL_API_PROMETHEUS_RATE_WINDOW): five scrapes."""
WORKER_COUNTERS = {
    "events_in": "flowmill_events_in_total",
    "events_out": "flowmill_events_out_total",
    "dead_letters": "flowmill_events_failed_total",
    "lag": "flowmill_consumer_lag",
}
"""The health view's field and the worker's series it comes from."""


def manifest(into: Path, servers: str) -> tuple[Path, str, str, str]:
    name = unique("promhealth")
    trips, clean, dlq = f"{name}-trips", f"{name}-clean", f"{name}-dlq"
    data = into / "trips.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps(
                {"trip_id": i, "region_id": i % 4, "fare": -1.0 if i % BAD_EVERY == 0 else 7.5}
            )
            + b"\n"
            for i in range(ROWS)
        )
    )
    doc = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            # Where the in-process API's health reader finds Kafka (as a pod's env would say).
            "kafka": {"bootstrapServers": servers},
            "topics": [
                {"name": trips, "partitions": 2},
                {"name": clean, "partitions": 2},
                {"name": dlq},
            ],
            "sources": [
                {
                    "name": "trips",
                    "fileReplay": {"path": data.name, "format": "jsonl", "rate": RATE},
                    "to": trips,
                    "key": "region_id",
                }
            ],
            "steps": [
                {
                    "name": "clean",
                    "from": trips,
                    "deadLetter": dlq,
                    "validate": {
                        "schema": {
                            "type": "object",
                            "required": ["trip_id", "fare"],
                            "properties": {"fare": {"type": "number", "minimum": 0}},
                        }
                    },
                    "sink": {"kafka": {"topic": clean}},
                }
            ],
        },
    }
    path = into / "promhealth.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, trips, clean, dlq


class MetricsSampler:
    """Each worker's own /metrics, read every 0.25 s: (time, {field: value}) per label."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.samples: dict[str, list[tuple[float, dict[str, float]]]] = {p: [] for p in ports}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)

    def now(self, label: str) -> dict[str, float]:
        """The worker's values as it reports them at this moment."""
        return scrape(self.ports[label])

    def spans(self, label: str, field: str, seconds: float) -> bool:
        """Whether the samples with the field cover the last `seconds` (rate() needs it)."""
        times = [t for t, values in self.samples[label] if field in values]
        return bool(times) and times[-1] - times[0] >= seconds

    def rate(self, label: str, field: str, seconds: float) -> float:
        """The field's growth per second over the last `seconds`, from the samples."""
        samples = [s for s in self.samples[label] if field in s[1]]
        end_t, end = samples[-1]
        start_t, start = next(s for s in reversed(samples) if s[0] <= end_t - seconds)
        return (end[field] - start[field]) / (end_t - start_t)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            for label, port in self.ports.items():
                with contextlib.suppress(httpx.HTTPError):  # a worker restarting
                    self.samples[label].append((time.monotonic(), scrape(port)))

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as the view's fields, each summed over the series' labels."""
    text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text
    wanted = {series: field for field, series in WORKER_COUNTERS.items()}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                field = wanted[sample.name]
                out[field] = out.get(field, 0.0) + sample.value
    return out


def test_health_from_prometheus_agrees_with_the_workers_metrics(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path, trips, clean, dlq = manifest(tmp_path, kafka_broker.bootstrap_servers)
    pipeline = load_pipeline(path)
    if not redis_server.running:  # another module may have stopped it to test an outage
        redis_server.start()
    # Up before the run, so that it scrapes the workers from their first second.
    with PrometheusServer(tmp_path / "prometheus", scrape_interval=SCRAPE) as prometheus:
        assert prometheus.url is not None
        run = LocalRun(
            path,
            bootstrap_servers=kafka_broker.bootstrap_servers,
            redis_url=redis_server.url,
            with_api=False,  # the API here is the one below, which reads Prometheus
            data_dir=tmp_path / "run",
        )
        with run:
            assert run.supervisor is not None
            ports = {c.spec.label: c.port for c in run.supervisor.children}
            assert set(ports) == {"source/trips", "step/clean"}
            prometheus.write_targets(
                # The workers label their series with pipeline and step themselves.
                [{"targets": [f"{LOOPBACK}:{port}"]} for port in ports.values()]
            )
            run.wait_ready(timeout=60)
            settings = ApiSettings(
                prometheus_url=prometheus.url, prometheus_rate_window=f"{WINDOW_S}s"
            )
            with (
                MetricsSampler(ports) as sampler,
                ApiServer(create_app([pipeline], redis_server.url, settings)) as api,
            ):
                check_the_view(
                    api.url, pipeline.name, prometheus, sampler, run, (trips, clean, dlq)
                )
        assert not run.child_pids(), "children left after stop()"


def check_the_view(
    api: str,
    name: str,
    prometheus: PrometheusServer,
    sampler: MetricsSampler,
    run: LocalRun,
    topics: tuple[str, str, str],
) -> None:
    trips, clean, dlq = topics
    bad = len(range(0, ROWS, BAD_EVERY))
    servers = run.bootstrap_servers
    http = httpx.Client(base_url=api, timeout=10, trust_env=False)

    def health() -> dict[str, Any]:
        response = http.get(f"/pipelines/{name}/health")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def nodes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {n["id"]: n for n in body["nodes"]}

    first = health()
    assert first["source"] == "prometheus" and prometheus.url in first["detail"], first
    assert set(nodes(first)) == {
        "source/trips",
        f"topic/{trips}",
        f"topic/{clean}",
        f"topic/{dlq}",
        "step/clean",
    }

    # -- while the replay flows: the rates over the view's window ----------------------
    def flowing() -> bool:
        # WINDOW_S + 2 scrapes of the step that saw events, and the replay not over.
        seen = prometheus.value(
            f'count_over_time(flowmill_events_in_total{{step="clean"}}[{WINDOW_S + 3}s])'
        )
        return (
            (seen or 0) >= WINDOW_S + 2
            and (sampler.now("step/clean").get("events_in") or 0) > 0
            and sampler.spans("source/trips", "events_out", WINDOW_S)
            and sampler.spans("step/clean", "events_in", WINDOW_S)
        )

    wait_for(flowing, 60, f"{WINDOW_S + 2} scrapes of the step while events flow")

    def rates() -> tuple[dict[str, float], dict[str, float]]:
        """(the view's, the workers' own) rates over the last WINDOW_S seconds."""
        body = nodes(health())
        own = {
            "source/trips": sampler.rate("source/trips", "events_out", WINDOW_S),
            "step/clean": sampler.rate("step/clean", "events_in", WINDOW_S),
        }
        produced = sampler.now("source/trips").get("events_out", 0)
        assert produced < ROWS, (
            f"the replay ended ({produced} of {ROWS}) before the rates were read"
        )
        shown = {
            "source/trips": body["source/trips"]["rate_out"],
            "step/clean": body["step/clean"]["rate_in"],
        }
        print(f"[health] rates over {WINDOW_S} s: view {shown}, workers' /metrics {own}")
        return shown, own

    def agree(shown: dict[str, float], own: dict[str, float]) -> bool:
        # The same counter over the same seconds, read at other instants (Prometheus's
        # scrapes, this test's samples) of a steady replay: within a quarter.
        return all(abs(shown[label] - rate) <= 0.25 * rate for label, rate in own.items())

    # A worker stalled for a second on a loaded machine puts the stall in one reading's
    # window and not the other's: up to 3 readings a second apart, one must agree (a
    # view reading the wrong series, or none, agrees in none).
    shown, own = rates()
    for _ in range(2):
        if agree(shown, own):
            break
        time.sleep(1.0)
        shown, own = rates()
    for label, rate in own.items():
        assert rate > RATE / 4, (label, rate)
        assert abs(shown[label] - rate) <= 0.25 * rate, (label, shown[label], rate)

    # -- at rest: every count, the lag, the dead letters ---------------------------------
    wait_for(
        lambda: sampler.now("step/clean").get("events_in") == ROWS,
        90,
        f"the step consuming all {ROWS} trips",
    )

    def settled() -> dict[str, dict[str, Any]] | None:
        # Every target scraped since it finished: Prometheus scrapes the source and the
        # step at their own instants, so the step's last count can be newer than the
        # source's (seen: the view's source at 770 of 800 when the step showed 800).
        got = nodes(health())
        step, source = got["step/clean"], got["source/trips"]
        done = step.get("events_in") == ROWS and step.get("lag") == 0
        return got if done and source.get("events_out") == ROWS else None

    at_rest = wait_for(settled, 60, "the view showing every trip produced and consumed")
    source, step = at_rest["source/trips"], at_rest["step/clean"]
    mine = {"source/trips": sampler.now("source/trips"), "step/clean": sampler.now("step/clean")}
    assert source["events_out"] == mine["source/trips"]["events_out"] == ROWS
    assert step["events_in"] == mine["step/clean"]["events_in"] == ROWS
    assert step["events_out"] == mine["step/clean"]["events_out"] == ROWS - bad
    assert step["dead_letters"] == mine["step/clean"]["dead_letters"] == bad
    assert step["lag"] == mine["step/clean"]["lag"] == 0
    for node in (source, step):
        assert node["state"] == "ready" and node["replicas"] == 1, node
        assert node["restarts"] == 0 and node["pods_gone"] == 0, node
    reasons = at_rest[f"topic/{dlq}"]["reasons"]
    assert len(reasons) == min(bad, 5) and reasons == step["reasons"]
    # Each is a record of the dead-letter topic, standing for one of the refused trips.
    dead_letters = {(r["partition"], r["offset"]): r["event"] for r in read_topic(servers, dlq)}
    assert len(dead_letters) == bad
    for dead in reasons:
        assert dead["step"] == "clean" and "fare" in dead["reason"], dead
        assert dead["origin"].startswith(f"{trips}["), dead
        assert dead_letters[(dead["partition"], dead["offset"])]["trip_id"] % BAD_EVERY == 0

    # -- a killed worker: its counter resets, Prometheus counts one restart -------------
    pid = row(run, "step/clean").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        if row(run, "step/clean").restarts != 1 or row(run, "step/clean").state != "ready":
            return None
        step = nodes(health())["step/clean"]
        return step if step["restarts"] == 1 and step["state"] == "ready" else None

    step = wait_for(restarted, 90, "one restart of the step in the view")
    assert step["replicas"] == 1 and step["pods_gone"] == 0, step  # the same target
    # The view counts the new process (its counter from 0), as its /metrics does: it
    # resumed at its committed position, with nothing more to read.
    assert step["events_out"] == sampler.now("step/clean")["events_out"] == 0
    assert nodes(health())["source/trips"]["restarts"] == 0
