"""The request metrics counted in plain lists expose what prometheus_client's own Counter
and Histogram would for the same requests: same series, names, help, types, labels,
buckets and values (creation times aside)."""

from __future__ import annotations

import random
import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from flowmill_api.metrics import BUCKETS, LABELS, LATENCY, REQUESTS, UNMATCHED, ApiMetrics

_CREATED = re.compile(r"^(\S+_created(\{.*\})?) \S+$", re.M)


def _masked(registry: CollectorRegistry) -> str:
    return _CREATED.sub(r"\1 T", generate_latest(registry).decode())


def _reference() -> tuple[CollectorRegistry, Counter, Histogram]:
    """The metrics as they were defined with prometheus_client's lock-based types."""
    registry = CollectorRegistry()
    requests = Counter(*REQUESTS, LABELS, registry=registry)
    latency = Histogram(*LATENCY, LABELS, buckets=BUCKETS, registry=registry)
    return registry, requests, latency


def test_exposition_matches_prometheus_client_counter_and_histogram() -> None:
    rng = random.Random(14)
    ours = ApiMetrics()
    registry, requests, latency = _reference()
    routes = ["/pipelines/{pipeline}/tables/{table}/windows/current/top", UNMATCHED, "/metrics"]
    # Exact bucket bounds too: a value equal to a bound belongs to that bound's bucket.
    values = [*BUCKETS, 0.0, 1e-7, 11.0, *(rng.expovariate(200) for _ in range(300))]
    for seconds in values:
        method = rng.choice(["GET", "HEAD"])
        route = rng.choice(routes)
        status = rng.choice([200, 404, 422, 503])
        ours.observe(method, route, status, seconds)
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route, str(status)).observe(seconds)
    ours_text = _masked(ours.registry)
    reference_text = _masked(registry)
    # The reference has neither the live-stream gauge nor the 503 counter: compare the
    # request families, which come first, in the order their series were first seen.
    assert ours_text.startswith(reference_text)
    assert "_created" in reference_text and 'le="+Inf"' in reference_text


def test_created_is_when_a_series_was_first_counted() -> None:
    ours = ApiMetrics()
    ours.observe("GET", "/a", 200, 0.001)
    text = generate_latest(ours.registry).decode()
    created = re.findall(r"^flowmill_api_request\S*_created\{.*\} (\S+)$", text, re.M)
    assert len(created) == 2 and all(float(c) > 1e9 for c in created)
