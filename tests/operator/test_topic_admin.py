"""Topics through the Kafka admin API (the mode for clusters without Strimzi), on the
session's real broker: create, grow, refuse to shrink, configs, delete only our own."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kafka.admin import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from flowmill.local.kafka import EmbeddedKafka
from flowmill.spec import PipelineTopic
from flowmill_operator.topic_admin import KafkaAdminError, TopicAdmin
from tests.harness.waiting import unique


def describe(broker: EmbeddedKafka, name: str) -> tuple[int, dict[str, str]]:
    """Partitions and topic-level configs of a topic, read with a client of our own."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        (topic,) = admin.describe_topics([name])
        assert topic["error_code"] == 0, topic
        (response,) = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        (resource,) = response.to_object()["resources"]
        configs = {
            e["config_names"]: e["config_value"]
            for e in resource["config_entries"]
            if e["config_source"] == 1
        }
        return len(topic["partitions"]), configs
    finally:
        admin.close()


def exists(broker: EmbeddedKafka, name: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        return name in admin.list_topics()
    finally:
        admin.close()


def reports(sync: Any) -> dict[str, Any]:
    return {t.name: t for t in sync.topics}


def test_creates_missing_topics_with_partitions_and_configs(kafka_broker: EmbeddedKafka) -> None:
    events, changelog = unique("events"), unique("pending")
    wanted = [
        PipelineTopic(events, 3, 1, {"retention.ms": "3600000"}),
        PipelineTopic(changelog, 3, 1, {"cleanup.policy": "compact"}, step="join"),
    ]
    with TopicAdmin(kafka_broker.bootstrap_servers) as admin:
        sync = admin.sync(wanted, created_before=())
    assert sync.created == [events, changelog]
    assert [t.name for t in sync.topics] == [events, changelog], "reported in spec order"
    assert all(t.state == "Ready" and t.created for t in sync.topics)
    assert describe(kafka_broker, events) == (3, {"retention.ms": "3600000"})
    assert describe(kafka_broker, changelog) == (3, {"cleanup.policy": "compact"})

    with TopicAdmin(kafka_broker.bootstrap_servers) as admin:
        again = admin.sync(wanted, created_before=sync.created)
    assert again.created == [] and again.changes == [], "a second sync changes nothing"
    assert all(t.created for t in again.topics), "the record of who created them is kept"


def test_grows_partitions_and_never_shrinks_them(kafka_broker: EmbeddedKafka) -> None:
    name = unique("grow")
    with TopicAdmin(kafka_broker.bootstrap_servers) as admin:
        admin.sync([PipelineTopic(name, 2, 1)], created_before=())
        grown = admin.sync([PipelineTopic(name, 5, 1)], created_before=[name])
        assert grown.changes == [f"{name}: partitions 2 -> 5"]
        assert reports(grown)[name].partitions == 5
        assert describe(kafka_broker, name)[0] == 5

        shrunk = admin.sync([PipelineTopic(name, 1, 1)], created_before=[name])
    report = reports(shrunk)[name]
    assert report.state == "ShrinkRefused"
    assert report.partitions == 5
    assert name in report.message and "5 partitions" in report.message
    assert "asks for 1" in report.message
    assert shrunk.refused == [report]
    assert describe(kafka_broker, name)[0] == 5, "Kafka keeps every partition (and its data)"


def test_configs_follow_the_spec_and_leave_a_foreign_topics_own_alone(
    kafka_broker: EmbeddedKafka,
) -> None:
    ours, theirs = unique("ours"), unique("theirs")
    kafka_broker.create_topics([(theirs, 2)])
    foreign = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        foreign.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, theirs, configs={"segment.ms": "600000"})]
        )
    finally:
        foreign.close()

    with TopicAdmin(kafka_broker.bootstrap_servers) as admin:
        admin.sync([PipelineTopic(ours, 1, 1, {"retention.ms": "1000"})], created_before=())
        first = admin.sync(
            [
                PipelineTopic(ours, 1, 1, {"cleanup.policy": "compact"}),
                PipelineTopic(theirs, 2, 1, {"retention.ms": "5000"}),
            ],
            created_before=[ours],
        )
    assert f"{ours}: config cleanup.policy, retention.ms" in first.changes
    # Ours carries exactly the spec's configs: retention.ms, no longer in it, is gone.
    assert describe(kafka_broker, ours)[1] == {"cleanup.policy": "compact"}
    # Theirs gets the spec's key and keeps its own.
    assert describe(kafka_broker, theirs)[1] == {"segment.ms": "600000", "retention.ms": "5000"}
    assert reports(first)[theirs].created is False


def test_deletes_what_it_is_given_and_counts_missing_topics_as_gone(
    kafka_broker: EmbeddedKafka,
) -> None:
    ours, kept = unique("ours"), unique("kept")
    kafka_broker.create_topics([(kept, 1)])
    with TopicAdmin(kafka_broker.bootstrap_servers) as admin:
        sync = admin.sync([PipelineTopic(ours, 1, 1), PipelineTopic(kept, 1, 1)], ())
        assert sync.created == [ours], "a topic that existed before is not ours"
        assert admin.delete([ours, unique("never-existed")])[0] == ours
    assert not exists(kafka_broker, ours)
    assert exists(kafka_broker, kept)


def test_an_unreachable_kafka_is_an_error_naming_it() -> None:
    # A loopback port nothing listens on.
    with pytest.raises(KafkaAdminError, match=r"127\.0\.0\.1:9"):
        TopicAdmin("127.0.0.1:9", timeout=2)
