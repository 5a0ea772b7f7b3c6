"""A table being rebuilt, or incomplete, shows on the Pipeline (issue #15): the session's
operator reads the tables' status hashes from the Pipeline's real Redis, written here
field by field as the worker writes them, and `kubectl get pipelines` and the
TablesExact/Ready/Degraded conditions say what the API's X-Flowmill-Table-State says."""

from __future__ import annotations

from typing import Any

import redis

from flowmill import serving
from flowmill.local.redis import EmbeddedRedis
from flowmill.manifest import parse_pipeline
from flowmill.spec import Pipeline
from flowmill_operator.settings import RenderSettings
from flowmill_operator.table_state import TableStateReader, reachable_url
from tests.harness.kube import KubeControlPlane
from tests.operator.helpers import GROUP, VERSION, Cluster

NAME = "served"
TOPIC = "rides"


def body(namespace: str, redis_url: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Pipeline",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "kafka": {"bootstrapServers": "kafka.data.svc:9092", "topicManagement": "unmanaged"},
            "redis": {"url": redis_url},
            "topics": [{"name": TOPIC, "partitions": 2}],
            "steps": [
                {
                    "name": "per-zone",
                    "from": TOPIC,
                    "keyBy": "zone",
                    "window": {"size": "1m"},
                    "aggregate": {"rides": "count"},
                    "sink": {"redis": {"table": "zones"}},
                },
                {
                    "name": "last-ride",
                    "from": TOPIC,
                    "keyBy": "rider",
                    "latest": {"fields": ["zone"]},
                    "sink": {"redis": {"table": "riders"}},
                },
            ],
        },
    }


def tables_column(control_plane: KubeControlPlane, namespace: str) -> str:
    """The TABLES column of `kubectl get pipelines`."""
    header, row = control_plane.kubectl("get", "pipelines", "-n", namespace).splitlines()
    # Columns are aligned to the header; an empty one (no LAG yet) leaves only spaces.
    start = header.index("TABLES")
    return row[start:].split()[0]


def test_a_rebuilt_or_incomplete_table_shows_on_the_pipeline(
    op_namespace: str,
    cluster: Cluster,
    operator_crds: KubeControlPlane,
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
) -> None:
    namespace = op_namespace
    cluster.create_pipeline(body(namespace, redis_server.url))
    exact = cluster.wait_condition(namespace, NAME, "TablesExact", "True")
    assert exact["reason"] == "AllExact" and "2 table(s)" in exact["message"]
    assert tables_column(operator_crds, namespace) == "exact"

    # The window step lost its Redis state and replays partition 1 up to offset 612.
    zones = serving.status_key(NAME, "zones")
    redis_client.hset(zones, serving.rebuilding_field(TOPIC, 1), "612")
    rebuilding = cluster.wait_condition(namespace, NAME, "TablesExact", "False")
    assert rebuilding["reason"] == "TablesRebuilding"
    assert f"table zones: {TOPIC}/1 until offset 612" in rebuilding["message"]
    status = cluster.pipeline(namespace, NAME)["status"]
    assert status["tablesState"] == "rebuilding"
    assert status["tables"] == [
        {
            "name": "zones",
            "step": "per-zone",
            "state": "rebuilding",
            "rebuilding": [{"topic": TOPIC, "partition": 1, "untilOffset": 612}],
        },
        {"name": "riders", "step": "last-ride", "state": "exact"},
    ]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "rebuilding from Kafka" in ready["message"]
    assert tables_column(operator_crds, namespace) == "rebuilding"

    # The rebuild caught up, but Kafka no longer held partition 0 before offset 40.
    redis_client.hdel(zones, serving.rebuilding_field(TOPIC, 1))
    redis_client.hset(zones, serving.incomplete_field(TOPIC, 0), serving.incomplete_value(40, 1))
    degraded = cluster.wait_condition(namespace, NAME, "Degraded", "True")
    assert degraded["reason"] == "TablesIncomplete"
    assert f"{TOPIC}/0 before offset 40" in degraded["message"]
    status = cluster.pipeline(namespace, NAME)["status"]
    assert status["tables"][0]["incomplete"] == [
        {"topic": TOPIC, "partition": 0, "missingBeforeOffset": 40, "detectedMs": 1}
    ]
    assert tables_column(operator_crds, namespace) == "incomplete"

    # Marked exact again by hand (docs/reliability.md): the conditions clear.
    redis_client.delete(zones)
    cluster.wait_condition(namespace, NAME, "TablesExact", "True")
    assert cluster.condition(namespace, NAME, "Degraded")["status"] == "False"  # type: ignore[index]


async def test_a_redis_the_operator_cannot_read_is_unknown(redis_server: EmbeddedRedis) -> None:
    """Unknown, never an error: a Redis whose credentials are in a Secret (the operator
    reads none), and one that does not answer (asked again only after a pause)."""
    settings = RenderSettings(image="x")

    def pipeline(redis_spec: dict[str, Any]) -> Pipeline:
        document = body("team", redis_server.url)
        document["spec"]["redis"] = redis_spec
        return parse_pipeline(document)

    secret = {"name": "redis", "key": "password"}
    url, why = reachable_url(
        pipeline({"url": "redis://r:6379/0", "passwordSecretRef": secret}), settings
    )
    assert url is None and "passwordSecretRef" in why
    reader = TableStateReader(timeout=0.5, retry_after=60)
    try:
        found = await reader.read(pipeline({"secretRef": secret}), settings)
        assert found is not None and found.unknown == "NoRedisAccess"
        closed = redis_server.url.rsplit(":", 1)[0] + ":1/0"  # nothing listens on port 1
        found = await reader.read(pipeline({"url": closed}), settings)
        assert found is not None and found.unknown == "RedisUnreachable"
        assert "did not answer" in found.unknown_reason
        again = await reader.read(pipeline({"url": closed}), settings)
        assert again is not None and again.unknown_reason == found.unknown_reason
        served = await reader.read(pipeline({"url": redis_server.url}), settings)
        assert served is not None and served.unknown is None
        assert set(served.tables) == {"zones", "riders"}
    finally:
        await reader.close()
