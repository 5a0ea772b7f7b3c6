"""The operator managing topics through the Kafka admin API (no Strimzi): the session
operator on the real control plane, the topics on the real broker."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer  # type: ignore[import-untyped]

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec.topology import DEAD_LETTER_REASON_HEADER
from flowmill_operator import naming
from tests.harness.waiting import wait_for
from tests.operator.helpers import STRIMZI, Cluster

pytestmark = [pytest.mark.kube, pytest.mark.kafka]

TIMEOUT = 30.0


def partitions(broker: EmbeddedKafka) -> dict[str, int]:
    """Every topic on the broker and its partition count."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        return {t["topic"]: len(t["partitions"]) for t in admin.describe_topics()}
    finally:
        admin.close()


def pipeline(namespace: str, broker: EmbeddedKafka, topics: list[dict[str, Any]]) -> dict[str, Any]:
    events, joined = topics[0]["name"], topics[1]["name"]
    return {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "admin-topics", "namespace": namespace},
        "spec": {
            "kafka": {"bootstrapServers": broker.bootstrap_servers, "topicManagement": "admin"},
            "topics": topics,
            "steps": [
                {
                    "name": "join",
                    "from": events,
                    "correlate": {"with": joined, "key": "id", "timeout": "1m"},
                }
            ],
            "api": {"enabled": False},
        },
    }


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.pipeline(namespace, name).get("status") or {}


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return status_of(cluster, namespace, "admin-topics")


def test_admin_mode_creates_grows_refuses_shrink_and_deletes_only_its_own(
    flowmill_operator: object,
    op_namespace: str,
    cluster: Cluster,
    kafka_broker: EmbeddedKafka,
) -> None:
    tag = secrets.token_hex(3)
    events, joined, existing = f"events-{tag}", f"joined-{tag}", f"existing-{tag}"
    changelog = "admin-topics.join.pending"
    kafka_broker.create_topics([(existing, 2)])
    topics = [
        {"name": events, "partitions": 2},
        {"name": joined, "partitions": 2, "config": {"retention.ms": "3600000"}},
        {"name": existing, "partitions": 2},
    ]
    body = pipeline(op_namespace, kafka_broker, topics)
    cluster.create_pipeline(body)

    ready = cluster.wait_condition(op_namespace, "admin-topics", "TopicsReady", "True", TIMEOUT)
    assert "Kafka admin API" in ready["message"]
    st = status(cluster, op_namespace)
    assert st["topicManagement"] == "admin"
    by_name = {t["name"]: t for t in st["topics"]}
    assert set(by_name) == {events, joined, existing, changelog}, "the join's changelog too"
    assert by_name[events]["created"] and by_name[changelog]["created"]
    assert by_name[existing]["created"] is False, "it was there before the Pipeline"
    have = partitions(kafka_broker)
    assert have[events] == 2 and have[changelog] == 2
    assert not cluster.children(op_namespace, "admin-topics") & {
        ("KafkaTopic", op_namespace, "admin-topics-" + events)
    }, "no KafkaTopics in admin mode"

    # Grow: the join's sides grow together (they must stay co-partitioned), the
    # changelog follows its input.
    grown = [{**t, "partitions": 4} for t in topics]
    cluster.patch_pipeline(
        op_namespace, "admin-topics", pipeline(op_namespace, kafka_broker, grown)["spec"]
    )
    wait_for(
        lambda: partitions(kafka_broker)[changelog] == 4 and partitions(kafka_broker)[events] == 4,
        TIMEOUT,
        "partitions to grow to 4",
    )
    # The operator posts the Event after Kafka has grown the topic: wait for it too.
    wait_for(
        lambda: any(
            e["reason"] == "TopicsUpdated" and f"{events}: partitions 2 -> 4" in e["message"]
            for e in cluster.events(op_namespace, "admin-topics")
        ),
        TIMEOUT,
        "a TopicsUpdated Event naming the grown topic",
    )

    # Shrink: refused, with a condition and an Event naming the topic and both counts.
    shrunk = [{**t, "partitions": 3} for t in topics]
    cluster.patch_pipeline(
        op_namespace, "admin-topics", pipeline(op_namespace, kafka_broker, shrunk)["spec"]
    )
    degraded = cluster.wait_condition(op_namespace, "admin-topics", "Degraded", "True", TIMEOUT)
    assert degraded["reason"] == "PartitionShrinkRefused"
    assert f"topic {events} has 4 partitions and the spec asks for 3" in degraded["message"]
    topics_ready = cluster.condition(op_namespace, "admin-topics", "TopicsReady")
    assert topics_ready is not None and topics_ready["status"] == "False"
    wait_for(
        lambda: any(
            e["reason"] == "PartitionShrinkRefused" and events in e["message"]
            for e in cluster.events(op_namespace, "admin-topics")
        ),
        TIMEOUT,
        "a PartitionShrinkRefused Event",
    )
    assert partitions(kafka_broker)[events] == 4, "no partition was removed"
    states = {t["name"]: t["state"] for t in status(cluster, op_namespace)["topics"]}
    assert states[events] == "ShrinkRefused"

    # Back to what Kafka has, then delete: only the topics the operator created go.
    cluster.patch_pipeline(
        op_namespace, "admin-topics", pipeline(op_namespace, kafka_broker, grown)["spec"]
    )
    cluster.wait_condition(op_namespace, "admin-topics", "TopicsReady", "True", TIMEOUT)
    cluster.delete_pipeline(op_namespace, "admin-topics")
    wait_for(
        lambda: not ({events, joined, changelog} & set(partitions(kafka_broker))),
        TIMEOUT,
        "the operator's topics to be deleted",
    )
    assert existing in partitions(kafka_broker), "a topic that existed before is kept"


def test_leaving_strimzi_releases_the_kafka_topics_instead_of_deleting_them(
    flowmill_operator: object,
    op_namespace: str,
    cluster: Cluster,
    kafka_broker: EmbeddedKafka,
) -> None:
    topic = f"kept-{secrets.token_hex(3)}"
    body = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "leaves-strimzi", "namespace": op_namespace},
        "spec": {
            "kafka": {
                "cluster": "events",
                "bootstrapServers": kafka_broker.bootstrap_servers,
                "topicManagement": "strimzi",
            },
            "topics": [{"name": topic, "partitions": 2}],
            "api": {"enabled": False},
        },
    }
    cluster.create_pipeline(body)
    resource = naming.kafka_topic_resource("leaves-strimzi", topic)
    wait_for(lambda: cluster.topic(op_namespace, resource), TIMEOUT, "the KafkaTopic")
    # What Strimzi's topic operator does: a finalizer on the resource, the topic in Kafka.
    cluster.custom.patch_namespaced_custom_object(
        *STRIMZI[:2], op_namespace, STRIMZI[2], resource,
        {"metadata": {"finalizers": ["strimzi.io/topic-operator"]}},
    )  # fmt: skip
    kafka_broker.create_topics([(topic, 2)])

    body["spec"]["kafka"]["topicManagement"] = "admin"
    cluster.patch_pipeline(op_namespace, "leaves-strimzi", body["spec"])
    released = wait_for(
        lambda: (
            (t := cluster.topic(op_namespace, resource))["metadata"].get("deletionTimestamp") and t
        ),
        TIMEOUT,
        "the KafkaTopic to be deleted",
    )
    assert released["metadata"]["annotations"]["strimzi.io/managed"] == "false", (
        "marked unmanaged before deletion, so Strimzi keeps the topic"
    )
    cluster.wait_condition(op_namespace, "leaves-strimzi", "TopicsReady", "True", TIMEOUT)
    record = status_of(cluster, op_namespace, "leaves-strimzi")["topics"]
    assert record == [{"name": topic, "partitions": 2, "state": "Ready", "created": False}]
    cluster.custom.patch_namespaced_custom_object(
        *STRIMZI[:2], op_namespace, STRIMZI[2], resource, {"metadata": {"finalizers": []}}
    )

    cluster.delete_pipeline(op_namespace, "leaves-strimzi")
    wait_for(
        lambda: (
            not any(
                p["metadata"]["name"] == "leaves-strimzi"
                for p in cluster.custom.list_namespaced_custom_object(
                    "flowmill.dev", "v1alpha1", op_namespace, "pipelines"
                )["items"]
            )
        ),
        TIMEOUT,
        "the Pipeline to be finalized",
    )
    assert topic in partitions(kafka_broker), "the operator did not create it: it stays"


def test_restarts_and_dead_letters_reach_status_columns_and_events(
    flowmill_operator: object,
    op_namespace: str,
    cluster: Cluster,
    kafka_broker: EmbeddedKafka,
) -> None:
    """What `kubectl get pipelines -o wide` and `kubectl describe pipeline` show of a
    worker that restarted (as its kubelet reports it) and of dead letters on the topic."""
    tag = secrets.token_hex(3)
    events, dead = f"in-{tag}", f"dlq-{tag}"
    name = "health"
    body = {
        "apiVersion": "flowmill.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": op_namespace},
        "spec": {
            "kafka": {
                "bootstrapServers": kafka_broker.bootstrap_servers,
                "topicManagement": "admin",
            },
            "topics": [{"name": events}, {"name": dead}],
            "steps": [{"name": "check", "from": events, "deadLetter": dead, "filter": "true"}],
            "api": {"enabled": False},
        },
    }
    cluster.create_pipeline(body)
    wait_for(
        lambda: status_of(cluster, op_namespace, name).get("deadLetters") == 0,
        TIMEOUT,
        "deadLetters 0 in the status",
    )
    pod = wait_for(
        lambda: (
            cluster.core.list_namespaced_pod(
                op_namespace, label_selector=f"{naming.PIPELINE_LABEL}={name}"
            ).items
        ),
        TIMEOUT,
        "the step's pod",
    )[0]
    assert status_of(cluster, op_namespace, name)["restarts"] == 0

    # Two dead letters, as a worker writes them (the reason in its header).
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    for i in (1, 2):
        producer.send(
            dead, b"{}", headers=[(DEAD_LETTER_REASON_HEADER, f"on purpose {i}".encode())]
        )
        producer.flush()
    producer.close()
    # The container restarted twice, OOM-killed last: what its kubelet would report.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    container = pod.spec.containers[0]
    cluster.core.patch_namespaced_pod_status(
        pod.metadata.name,
        op_namespace,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": True,
                        "restartCount": 2,
                        "state": {"running": {"startedAt": now}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 137,
                                "reason": "OOMKilled",
                                "startedAt": now,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
            }
        },
    )

    def counted() -> dict[str, Any] | None:
        st = status_of(cluster, op_namespace, name)
        ok = st.get("restarts") == 2 and st.get("deadLetters") == 2
        return st if ok else None

    st = wait_for(counted, TIMEOUT, "restarts 2 and deadLetters 2 in the status")
    assert st["steps"][0]["restarts"] == 2

    def posted() -> dict[str, str] | None:
        found = {e["reason"]: e["message"] for e in cluster.events(op_namespace, name)}
        return found if {"WorkerRestarted", "DeadLetters"} <= set(found) else None

    found = wait_for(posted, TIMEOUT, "WorkerRestarted and DeadLetters Events")
    assert f"{pod.metadata.name}: OOMKilled (exit 137)" in found["WorkerRestarted"]
    assert "2 container restart(s)" in found["WorkerRestarted"]
    assert f"{dead} holds 2 (newest: on purpose 2)" in found["DeadLetters"]

    # The columns `kubectl get -o wide` prints: the apiserver's Table of the CRD's columns.
    response = cluster.api.call_api(
        *cluster.api.param_serialize(
            "GET",
            f"/apis/flowmill.dev/v1alpha1/namespaces/{op_namespace}/pipelines/{name}",
            header_params={"Accept": "application/json;as=Table;g=meta.k8s.io;v=v1"},
            auth_settings=["BearerToken"],
        )
    )
    table = json.loads(response.read())
    columns = [c["name"] for c in table["columnDefinitions"]]
    cells = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert cells["Restarts"] == 2 and cells["Dead-Letters"] == 2
    assert cells["Degraded"] == "AsExpected"
    cluster.delete_pipeline(op_namespace, name)
