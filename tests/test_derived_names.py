"""The names every part derives from a Pipeline (flowmill.spec.topology, flowmill.spec.launch).

The formats are spelled out here once: a running Pipeline's committed offsets and join
state live under these names, so changing one must be a decision, not an accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowmill.cli import build_parser
from flowmill.connections import bootstrap_servers
from flowmill.manifest import load_pipeline, parse_pipeline
from flowmill.spec import (
    API_PORT,
    ENV_BOOTSTRAP_SERVERS,
    WORKER_METRICS_PORT,
    Pipeline,
    PipelineTopic,
    all_topics,
    api_args,
    changelog_topic,
    consumer_group,
    mirror_group,
    source_transactional_id,
    step_transactional_id,
    strimzi_bootstrap_servers,
    worker_args,
)
from flowmill.spec.launch import API_HEADER_TIMEOUT_S, API_MAX_CONNECTIONS, STOP_GRACE_S
from flowmill_operator.settings import RenderSettings

FULL = Path(__file__).parent / "data" / "full_features.yaml"


def test_kafka_names_keep_their_formats() -> None:
    assert changelog_topic("trips", "complete") == "trips.complete.pending"
    assert consumer_group("trips", "complete") == "flowmill.trips.complete"
    assert step_transactional_id("trips", "complete", "pod-1") == "flowmill.trips.complete.pod-1"
    assert mirror_group("trips", "upstream") == "flowmill.trips.upstream"
    assert source_transactional_id("trips", "replay") == "flowmill.trips.replay"
    assert (WORKER_METRICS_PORT, API_PORT) == (9400, 8000)


def test_all_topics_are_the_declared_ones_then_each_join_changelog() -> None:
    pipeline = load_pipeline(FULL)
    topics = all_topics(pipeline)
    declared = [t.name for t in pipeline.spec.topics]
    assert [t.name for t in topics] == [*declared, "everything.join-trips.pending"]
    assert all(t.step is None for t in topics[:-1])
    starts = pipeline.spec.topic("starts")
    assert topics[-1] == PipelineTopic(
        "everything.join-trips.pending",
        starts.partitions,
        starts.replicas,
        {"cleanup.policy": "compact"},
        step="join-trips",
    )
    dlq = next(t for t in topics if t.name == "dlq")
    assert dlq.config == {"retention.ms": "604800000", "cleanup.policy": "delete"}


def test_strimzi_bootstrap_is_the_qualified_service_when_the_namespace_is_known() -> None:
    assert strimzi_bootstrap_servers("events", "kafka") == "events-kafka-bootstrap.kafka.svc:9092"
    assert strimzi_bootstrap_servers("events", None) == "events-kafka-bootstrap:9092"


def _strimzi_pipeline(kafka: dict[str, Any], namespace: str | None = None) -> Pipeline:
    metadata: dict[str, Any] = {"name": "p"}
    if namespace:
        metadata["namespace"] = namespace
    return parse_pipeline(
        {
            "apiVersion": "flowmill.dev/v1alpha1",
            "kind": "Pipeline",
            "metadata": metadata,
            "spec": {"kafka": kafka, "topics": [{"name": "t"}]},
        }
    )


def test_workers_find_strimzi_the_way_the_operator_points_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_BOOTSTRAP_SERVERS, raising=False)
    in_kafka_ns = _strimzi_pipeline({"cluster": "events", "namespace": "kafka"})
    assert bootstrap_servers(in_kafka_ns) == "events-kafka-bootstrap.kafka.svc:9092"
    # spec.kafka.namespace unset means the Pipeline's own namespace.
    own_ns = _strimzi_pipeline({"cluster": "events"}, namespace="team")
    assert bootstrap_servers(own_ns) == "events-kafka-bootstrap.team.svc:9092"
    assert bootstrap_servers(_strimzi_pipeline({"cluster": "events"})) == (
        "events-kafka-bootstrap:9092"
    )
    monkeypatch.setenv(ENV_BOOTSTRAP_SERVERS, "from-env:9092")
    assert bootstrap_servers(in_kafka_ns) == "from-env:9092"
    assert bootstrap_servers(in_kafka_ns, "from-flag:9092") == "from-flag:9092"


def test_worker_arguments_mean_what_the_worker_command_reads() -> None:
    parser = build_parser()
    step = parser.parse_args(
        worker_args(
            "/m.yaml",
            "step",
            "complete",
            bootstrap_servers="b:9092",
            metrics_port=9500,
        )
    )
    assert (step.command, step.pipeline, step.step, step.source) == (
        "worker",
        "/m.yaml",
        "complete",
        None,
    )
    # The Redis URL may carry a password: never an argument (ps shows argv).
    assert (step.bootstrap_servers, step.redis_url, step.metrics_port) == ("b:9092", None, 9500)
    # What a Deployment passes: the rest comes from the environment and the defaults.
    source = parser.parse_args(worker_args("/m.yaml", "source", "replay"))
    assert (source.source, source.step, source.bootstrap_servers) == ("replay", None, None)
    assert source.metrics_port == WORKER_METRICS_PORT


def test_api_arguments_mean_what_the_api_command_reads() -> None:
    parser = build_parser()
    api = parser.parse_args(api_args("/m.yaml", port=0))
    assert (api.command, api.pipeline, api.port, api.redis_url) == ("api", ["/m.yaml"], 0, None)
    assert parser.parse_args(api_args("/m.yaml")).port == API_PORT
    assert parser.parse_args(["api", "--pipeline", "/m.yaml"]).port == API_PORT
    # The connection flags the operator and `flowmill run` pass, read back as given.
    full = parser.parse_args(
        api_args(
            "/m.yaml",
            trusted_proxies=["10.0.0.0/8", "::1"],
            header_timeout_s=2.5,
            max_connections=7,
            stop_grace_s=30,
        )
    )
    assert (full.trusted_proxies, full.header_timeout, full.max_connections) == (
        "10.0.0.0/8,::1",
        2.5,
        7,
    )
    assert full.stop_grace == 30
    # Left out, they are the API's defaults, which the operator settings default to.
    plain = parser.parse_args(api_args("/m.yaml"))
    assert (plain.trusted_proxies, plain.header_timeout, plain.max_connections) == ("", None, None)
    assert RenderSettings().api_header_timeout_seconds == API_HEADER_TIMEOUT_S
    assert RenderSettings().api_max_connections == API_MAX_CONNECTIONS
    assert RenderSettings().api_stop_grace_seconds == plain.stop_grace == STOP_GRACE_S
