"""The health of a Pipeline: its graph (flowmill.spec.graph) with, on each node, what the
workers report about themselves and what Kafka holds.

Where the workers' numbers come from:
- a local run: the status `flowmill run` writes every second (ENV_API_RUN_STATUS), built
  by its supervisor from each child's /metrics and /readyz, with the restarts it did;
- a cluster: Prometheus (ENV_API_PROMETHEUS_URL), which scrapes the same /metrics of every
  pod (the API never calls the Kubernetes API; `kubectl get pipelines -o wide` and the
  operator's Events show the operator's side).

Kafka gives every topic's size and growth, and the dead letters' reasons (the newest
records of each dead-letter topic, read from their headers). Everything is read at most
once a second per Pipeline however many browsers poll, concurrent requests sharing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from flowmill.connections import ConnectionMissing, bootstrap_servers
from flowmill.kafka_security import KafkaClientSecurity, KafkaSecurityInvalid
from flowmill.spec import Pipeline
from flowmill.spec.graph import Graph, dead_letter_topics, pipeline_graph, step_id
from flowmill.spec.topology import (
    DEAD_LETTER_ORIGIN_HEADERS,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_STEP_HEADER,
    DEAD_LETTER_TIMESTAMP_HEADER,
)

log = logging.getLogger("flowmill.api")

REFRESH_S = 1.0
"""The newest answer is reused this long: polling browsers cost one read a second."""
STALE_AFTER_S = 10.0
"""A run status older than this describes a run that stopped (or hangs): states unknown."""
RATE_WINDOW_S = 5.0
"""Seconds a topic's growth rate is averaged over (as the run's status table does)."""
REASONS_KEPT = 5
"""The newest dead letters shown per dead-letter topic."""
KAFKA_TIMEOUT_S = 5.0
MAX_READ_BACK = 10_000
"""Offsets read back from a dead-letter partition's end at most, looking for its newest
records (transaction markers and aborted records take offsets too)."""


@dataclass
class _Cached:
    at: float = -1e9
    body: dict[str, Any] | None = None
    pending: asyncio.Task[dict[str, Any]] | None = None


@dataclass
class _TopicRates:
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, at: float, total: int) -> float | None:
        if self.history and total < self.history[-1][1]:
            self.history.clear()  # the topic was recreated
        self.history.append((at, total))
        while len(self.history) > 2 and at - self.history[0][0] > RATE_WINDOW_S:
            self.history.popleft()
        first_at, first_total = self.history[0]
        return None if at <= first_at else (total - first_total) / (at - first_at)


class KafkaView:
    """One consumer (no group: it commits nothing) for a Pipeline's Kafka: end offsets of
    every topic and the newest records of the dead-letter topics."""

    def __init__(self, servers: str, security: KafkaClientSecurity) -> None:
        self.servers = servers
        self.security = security
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.servers,
                enable_auto_commit=False,
                isolation_level="read_committed",
                client_id="flowmill-api-health",
                request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                **self.security.kwargs(),
            )
            await asyncio.wait_for(consumer.start(), KAFKA_TIMEOUT_S)
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def read(
        self, partitions: dict[str, int], dead_topics: list[str]
    ) -> tuple[dict[str, int], dict[str, list[dict[str, Any]]]]:
        """(messages per topic, newest dead letters per dead-letter topic, newest first).
        Messages are the sum of the partitions' last stable offsets (transaction markers
        included: an estimate of the count, exact in its growth)."""
        from aiokafka import TopicPartition

        async with self._lock:
            consumer = await self._started()
            tps = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
            ends = await asyncio.wait_for(consumer.end_offsets(tps), KAFKA_TIMEOUT_S)
            totals = {t: 0 for t in partitions}
            for tp, end in ends.items():
                totals[tp.topic] += end
            dead: dict[str, list[dict[str, Any]]] = {}
            wanted = {tp: end for tp, end in ends.items() if tp.topic in dead_topics and end > 0}
            if wanted:
                dead = await self._newest(consumer, wanted)
            return totals, {t: dead.get(t, []) for t in dead_topics}

    async def _newest(self, consumer: Any, ends: dict[Any, int]) -> dict[str, list[dict[str, Any]]]:
        """The REASONS_KEPT newest records of each topic. Dead letters are written in
        the step's transactions, whose markers take offsets too (one after each batch's
        records, at least one offset in two when a batch has one dead letter; aborted
        ones hide more): each partition is read back from its end, further each round,
        until it has REASONS_KEPT records or its beginning is reached."""
        per_partition: dict[Any, list[dict[str, Any]]] = {tp: [] for tp in ends}
        back = 2 * REASONS_KEPT
        wanted = {tp: (max(0, end - back), end) for tp, end in ends.items()}
        while wanted:
            for tp, records in (await self._read(consumer, wanted)).items():
                per_partition[tp] = records + per_partition[tp]
            if back >= MAX_READ_BACK:
                break
            back = min(4 * back, MAX_READ_BACK)
            wanted = {
                tp: (max(0, ends[tp] - back), start)
                for tp, (start, _) in wanted.items()
                if start > 0 and len(per_partition[tp]) < REASONS_KEPT
            }
        found: dict[str, list[dict[str, Any]]] = {}
        for tp, records in per_partition.items():
            found.setdefault(tp.topic, []).extend(records)
        for topic, records in found.items():
            records.sort(key=lambda d: (d["timestamp_ms"] or 0, d["offset"]), reverse=True)
            found[topic] = records[:REASONS_KEPT]
        return found

    async def _read(
        self, consumer: Any, ranges: dict[Any, tuple[int, int]]
    ) -> dict[Any, list[dict[str, Any]]]:
        """The committed records of each partition between two offsets, newest last."""
        consumer.assign(list(ranges))
        for tp, (start, _) in ranges.items():
            consumer.seek(tp, start)
        out: dict[Any, list[dict[str, Any]]] = {tp: [] for tp in ranges}
        remaining = set(ranges)
        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, records in batch.items():
                stop = ranges[tp][1]
                out[tp].extend(_dead_letter(tp, r) for r in records if r.offset < stop)
            for tp in list(remaining):
                # Positions pass the end over transaction markers, never returned.
                if await consumer.position(tp) >= ranges[tp][1]:
                    remaining.discard(tp)
        return out


def _dead_letter(tp: Any, record: Any) -> dict[str, Any]:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    origin = [headers.get(h) for h in DEAD_LETTER_ORIGIN_HEADERS]
    stamp = headers.get(DEAD_LETTER_TIMESTAMP_HEADER)
    return {
        "topic": tp.topic,
        "partition": tp.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "step": headers.get(DEAD_LETTER_STEP_HEADER),
        "reason": headers.get(DEAD_LETTER_REASON_HEADER, ""),
        "origin": None if None in origin else f"{origin[0]}[{origin[1]}]@{origin[2]}",
        "event_timestamp_ms": int(stamp) if stamp and stamp.lstrip("-").isdigit() else None,
    }


class Prometheus:
    """Instant queries of the workers' series (the labels WorkerMetrics sets)."""

    QUERIES = {
        "rate_in": "sum by (step) (rate(flowmill_events_in_total{{pipeline={p}}}[{w}]))",
        "rate_out": "sum by (step) (rate(flowmill_events_out_total{{pipeline={p}}}[{w}]))",
        "events_in": "sum by (step) (flowmill_events_in_total{{pipeline={p}}})",
        "events_out": "sum by (step) (flowmill_events_out_total{{pipeline={p}}})",
        "lag": "sum by (step) (flowmill_consumer_lag{{pipeline={p}}})",
        "dead": "sum by (step) (flowmill_events_failed_total{{pipeline={p}}})",
        # Each pod exports the counter once: the count of series is the replicas scraped.
        "replicas": "count by (step) (flowmill_events_out_total{{pipeline={p}}})",
        # A restarted worker counts from zero again: resets are its restarts (a container
        # the kubelet restarts keeps its pod's labels, so its series).
        "restarts": "sum by (step) (resets(flowmill_events_out_total{{pipeline={p}}}[1h]))",
        # A replaced pod is a new series; every series of the last hour, less those
        # scraped now, are the pods gone since.
        "pods_seen": "count by (step) (max_over_time(flowmill_events_out_total{{pipeline={p}}}[1h]))",
    }

    def __init__(self, url: str, rate_window: str = "1m") -> None:
        self.url = url.rstrip("/")
        self.rate_window = rate_window
        self.client = httpx.AsyncClient(timeout=KAFKA_TIMEOUT_S, trust_env=False)

    async def close(self) -> None:
        await self.client.aclose()

    async def read(self, pipeline: str) -> dict[str, dict[str, float]]:
        """Per step (or source) name, each quantity of QUERIES."""
        quoted = orjson.dumps(pipeline).decode()  # PromQL takes JSON-style string literals
        names = list(self.QUERIES)
        answers = await asyncio.gather(
            *(self._query(self.QUERIES[n].format(p=quoted, w=self.rate_window)) for n in names)
        )
        out: dict[str, dict[str, float]] = {}
        for name, series in zip(names, answers, strict=True):
            for item in series:
                step = item.get("metric", {}).get("step")
                if step is not None:
                    out.setdefault(step, {})[name] = float(item["value"][1])
        return out

    async def _query(self, query: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{self.url}/api/v1/query", params={"query": query})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


class HealthReader:
    """Everything the health view of one API process reads, per Pipeline."""

    def __init__(
        self,
        pipelines: dict[str, Pipeline],
        run_status_file: Path | None,
        prometheus_url: str | None,
        prometheus_rate_window: str = "1m",
    ) -> None:
        self.pipelines = pipelines
        self.graphs: dict[str, Graph] = {name: pipeline_graph(p) for name, p in pipelines.items()}
        self.run_status_file = run_status_file
        self.prometheus = (
            Prometheus(prometheus_url, prometheus_rate_window) if prometheus_url else None
        )
        self._kafka: dict[str, KafkaView] = {}
        self._kafka_problem: dict[str, str] = {}
        self._rates: dict[tuple[str, str], _TopicRates] = {}
        self._cache: dict[str, _Cached] = {}

    async def close(self) -> None:
        for view in self._kafka.values():
            await view.close()
        if self.prometheus is not None:
            await self.prometheus.close()

    def graph(self, pipeline: str) -> Graph:
        return self.graphs[pipeline]

    async def health(self, pipeline: str) -> dict[str, Any]:
        """The newest health of `pipeline` (at most REFRESH_S old)."""
        cached = self._cache.setdefault(pipeline, _Cached())
        if cached.body is not None and time.monotonic() - cached.at < REFRESH_S:
            return cached.body
        if cached.pending is None:
            cached.pending = asyncio.ensure_future(self._read(pipeline))
        task = cached.pending
        try:
            body = await asyncio.shield(task)
        finally:
            if cached.pending is task and task.done():
                cached.pending = None
        cached.body, cached.at = body, time.monotonic()
        return body

    async def _read(self, name: str) -> dict[str, Any]:
        pipeline = self.pipelines[name]
        graph = self.graphs[name]
        workers, source, detail, api = await self._workers(name)
        messages, dead, kafka = await self._kafka_read(pipeline)
        now = time.monotonic()
        nodes = []
        for node in graph.nodes:
            entry: dict[str, Any] = {
                "id": node.id,
                "kind": node.kind,
                "name": node.name,
                "detail": node.detail,
                "column": node.column,
                "row": node.row,
                "reasons": [],
            }
            if node.kind in ("source", "step"):
                entry |= workers.get(node.id, {"state": "unknown"})
            elif node.kind == "topic":
                total = messages.get(node.name)
                entry["messages"] = total
                if total is not None:
                    rates = self._rates.setdefault((name, node.name), _TopicRates())
                    entry["rate_in"] = rates.add(now, total)
                if node.name in dead:
                    entry["reasons"] = dead[node.name]
            nodes.append(entry)
        by_id = {n["id"]: n for n in nodes}
        for edge in graph.edges:
            target = by_id[edge.target]
            if target["kind"] == "sink":  # a sink does what its step writes
                writer = by_id[edge.source]
                target["state"] = writer.get("state")
                target["rate_in"] = writer.get("rate_out")
                target["events_in"] = writer.get("events_out")
        for step in pipeline.spec.steps:
            by_id[step_id(step.name)]["reasons"] = [
                d
                for topic in dict.fromkeys(t for _, t in step.outputs() if t in dead)
                for d in dead[topic]
                if d["step"] in (None, step.name)
            ][:REASONS_KEPT]
        return {
            "pipeline": name,
            "source": source,
            "detail": detail,
            "kafka": kafka,
            "updated_ms": int(time.time() * 1000),
            "nodes": nodes,
            "edges": [
                {"source": e.source, "target": e.target, "kind": e.kind} for e in graph.edges
            ],
            "api": api,
        }

    async def _workers(
        self, pipeline: str
    ) -> tuple[dict[str, dict[str, Any]], str, str, dict[str, Any] | None]:
        """(per node id, which source, what it says, the API's own row)."""
        if self.run_status_file is not None:
            return self._from_run(pipeline, self.run_status_file)
        if self.prometheus is not None:
            try:
                by_step = await self.prometheus.read(pipeline)
            except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as err:
                return {}, "prometheus", f"Prometheus did not answer: {err}", None
            return (
                self._from_prometheus(self.pipelines[pipeline], by_step),
                "prometheus",
                f"Prometheus at {self.prometheus.url}",
                None,
            )
        return {}, "none", "no run status and no Prometheus configured", None

    def _from_run(
        self, pipeline: str, path: Path
    ) -> tuple[dict[str, dict[str, Any]], str, str, dict[str, Any] | None]:
        try:
            status = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}, "run", "the run has not written its status yet", None
        except (OSError, orjson.JSONDecodeError) as err:
            return {}, "run", f"cannot read the run's status {path}: {err}", None
        if status.get("pipeline") != pipeline:
            return {}, "run", f"the local run is of Pipeline {status.get('pipeline')}", None
        age = time.time() - status.get("updated_ms", 0) / 1000
        stale = age > STALE_AFTER_S
        out: dict[str, dict[str, Any]] = {}
        api = None
        for row in status.get("rows", []):
            values = {
                "state": "unknown" if stale else row["state"],
                "rate_in": row.get("rate_in") if row["kind"] != "source" else None,
                "rate_out": row.get("rate_out"),
                "events_in": row.get("events_in") if row["kind"] != "source" else None,
                "events_out": row.get("events_out"),
                "lag": row.get("lag") if row["kind"] != "source" else None,
                "dead_letters": row.get("dead"),
                "restarts": row.get("restarts", 0),
                # A local run starts one process per part, whatever spec replicas says.
                "replicas": 1,
                "ready_replicas": 1 if row["state"] in ("ready", "done") and not stale else 0,
                "message": row.get("detail", ""),
            }
            if row["kind"] == "api":
                api = values
            else:
                out[row["label"]] = values
        detail = f"flowmill run's supervisor, {age:.1f} s ago"
        if stale:
            detail += ": the run is not updating its status (stopped?)"
        return out, "run", detail, api

    def _from_prometheus(
        self, pipeline: Pipeline, by_step: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        parts = [("source", s.name) for s in pipeline.spec.sources]
        parts += [("step", s.name) for s in pipeline.spec.steps]
        for kind, part in parts:
            got = by_step.get(part)
            if got is None:
                out[f"{kind}/{part}"] = {"state": "unknown", "message": "no series in Prometheus"}
                continue
            replicas = int(got.get("replicas", 0))
            out[f"{kind}/{part}"] = {
                "pods_gone": max(0, int(got.get("pods_seen", 0)) - replicas),
                "state": "ready" if replicas else "unknown",
                "rate_in": got.get("rate_in") if kind == "step" else None,
                "rate_out": got.get("rate_out"),
                "events_in": got.get("events_in") if kind == "step" else None,
                "events_out": got.get("events_out"),
                "lag": got.get("lag") if kind == "step" else None,
                "dead_letters": got.get("dead"),
                "restarts": int(got.get("restarts", 0)),
                "replicas": replicas,
                "ready_replicas": replicas,
                "message": "pods scraped by Prometheus",
            }
        return out

    async def _kafka_read(
        self, pipeline: Pipeline
    ) -> tuple[dict[str, int], dict[str, list[dict[str, Any]]], str]:
        view = self._kafka.get(pipeline.name)
        if view is None:
            problem = self._kafka_problem.get(pipeline.name)
            if problem is not None:
                return {}, {}, problem
            try:
                servers = bootstrap_servers(pipeline)
                view = KafkaView(servers, KafkaClientSecurity.from_env())
            except (ConnectionMissing, KafkaSecurityInvalid) as err:
                self._kafka_problem[pipeline.name] = f"no Kafka: {err}"
                return {}, {}, self._kafka_problem[pipeline.name]
            self._kafka[pipeline.name] = view
        partitions = {t.name: t.partitions for t in pipeline.spec.topics}
        try:
            messages, dead = await view.read(partitions, dead_letter_topics(pipeline))
        except Exception as err:  # aiokafka's errors share no base; the view still answers
            log.warning("health: reading Kafka at %s: %r", view.servers, err)
            await view.close()
            return {}, {}, f"Kafka at {view.servers} did not answer: {type(err).__name__} {err}"
        return messages, dead, "ok"
