"""Topics through the Kafka admin API, for clusters without Strimzi (plain Kafka, MSK,
Confluent, Redpanda): the operator creates a Pipeline's topics itself, grows their
partitions, sets their configs, and deletes on Pipeline deletion only those it created.

Every call here blocks (kafka-python's admin client is synchronous), so the reconciler
runs them in a thread. The record of which topics this operator created is kept by the
caller (in the Pipeline's status): Kafka has no place for it, and a topic that existed
before the Pipeline must never be deleted with it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from kafka import KafkaAdminClient
from kafka.admin import (
    ConfigResource,
    ConfigResourceType,
    NewPartitions,
    NewTopic,
)
from kafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from flowmill.kafka_security import KafkaClientSecurity, KafkaSecurityInvalid, refusal_sync
from flowmill.spec import PipelineTopic
from flowmill.spec.topology import DEAD_LETTER_REASON_HEADER

TopicState = Literal["Ready", "ShrinkRefused", "Failed"]

CLIENT_ID = "flowmill-operator"
# Kafka's DescribeConfigs source of a config set on the topic itself (not a default).
_DYNAMIC_TOPIC_CONFIG = 1
_UNKNOWN_TOPIC = UnknownTopicOrPartitionError.errno


class KafkaAdminError(RuntimeError):
    """Kafka could not be reached or refused to describe the topics; a retry may do."""


@dataclass(frozen=True)
class TopicReport:
    """One topic after a sync, as the Pipeline's status lists it."""

    name: str
    partitions: int
    """Partitions the topic has in Kafka now."""
    state: TopicState
    created: bool
    """Created by this operator (now or earlier): deleted with the Pipeline."""
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "partitions": self.partitions,
            "state": self.state,
            "created": self.created,
        }
        if self.message:
            entry["message"] = self.message
        return entry


@dataclass(frozen=True)
class DeadLetterCount:
    """One dead-letter topic: how many records it holds and the newest one's reason."""

    records: int
    newest_reason: str = ""


@dataclass
class TopicSync:
    """What one sync found and did."""

    topics: list[TopicReport] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    """Topics created by this sync."""
    changes: list[str] = field(default_factory=list)
    """Partition and config changes made by this sync, as sentences."""

    @property
    def refused(self) -> list[TopicReport]:
        return [t for t in self.topics if t.state != "Ready"]


class TopicAdmin:
    """One admin connection to one Kafka cluster; use as a context manager."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        security: KafkaClientSecurity | None = None,
        timeout: float = 10.0,
    ) -> None:
        """`security` unset: the operator's own, from its environment (the chart's
        kafka.admin values)."""
        self.bootstrap_servers = bootstrap_servers
        self.timeout = timeout
        try:
            self.security = security or KafkaClientSecurity.from_env()
        except KafkaSecurityInvalid as err:
            raise KafkaAdminError(f"the operator's {err}") from err
        try:
            self._admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers,
                client_id=CLIENT_ID,
                request_timeout_ms=int(timeout * 1000),
                api_version_auto_timeout_ms=int(timeout * 1000),
                **self.security.kwargs(),
            )
        except KafkaError as err:
            raise self._error(err) from err

    def _error(self, err: KafkaError) -> KafkaAdminError:
        """kafka-python words a refused login as an incompatible broker version; a
        direct connection says what Kafka refused instead."""
        if self.security.protocol != "PLAINTEXT":
            why = refusal_sync(self.bootstrap_servers, self.security, self.timeout)
            if why is not None:
                return KafkaAdminError(why)
        return KafkaAdminError(f"Kafka at {self.bootstrap_servers}: {err}")

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._admin.close()

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, topics: dict[str, int]) -> dict[str, DeadLetterCount]:
        """Per dead-letter topic (name: partitions), the records it holds (the sum of the
        partitions' end offsets: transaction markers count too) and the newest record's
        reason (its DEAD_LETTER_REASON_HEADER). One consumer that joins no group."""
        from kafka import KafkaConsumer, TopicPartition

        if not topics:
            return {}
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=CLIENT_ID,
                enable_auto_commit=False,
                request_timeout_ms=int(self.timeout * 1000) + 1,
                api_version_auto_timeout_ms=int(self.timeout * 1000),
                consumer_timeout_ms=int(self.timeout * 1000),
                **self.security.kwargs(),
            )
        except KafkaError as err:
            raise self._error(err) from err
        try:
            tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
            ends = consumer.end_offsets(tps)
            out = {t: DeadLetterCount(0) for t in topics}
            newest: dict[str, tuple[int, str]] = {}
            for tp, end in ends.items():
                out[tp.topic] = DeadLetterCount(out[tp.topic].records + end)
                if end <= 0:
                    continue
                consumer.assign([tp])
                consumer.seek(tp, end - 1)
                for record in consumer.poll(timeout_ms=int(self.timeout * 1000)).get(tp, []):
                    headers = dict(record.headers or [])
                    reason = headers.get(DEAD_LETTER_REASON_HEADER, b"").decode("utf-8", "replace")
                    if record.timestamp >= newest.get(tp.topic, (-1, ""))[0]:
                        newest[tp.topic] = (record.timestamp, reason)
            for topic, (_, reason) in newest.items():
                out[topic] = DeadLetterCount(out[topic].records, reason)
            return out
        except KafkaError as err:
            raise self._error(err) from err
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    # -- sync ------------------------------------------------------------------------------

    def sync(self, wanted: list[PipelineTopic], created_before: Collection[str]) -> TopicSync:
        """Make Kafka hold every wanted topic: create the missing ones, add partitions
        where the spec asks for more, set configs. Partitions are never removed (Kafka
        cannot, and deleting the topic would lose its data): such a topic is reported
        ShrinkRefused and left as it is."""
        try:
            return self._sync(wanted, set(created_before))
        except KafkaError as err:
            raise self._error(err) from err

    def _sync(self, wanted: list[PipelineTopic], created_before: set[str]) -> TopicSync:
        sync = TopicSync()
        existing = self._partition_counts([t.name for t in wanted])
        for topic in wanted:
            if topic.name in existing:
                continue
            try:
                self._admin.create_topics(
                    [
                        NewTopic(
                            topic.name, topic.partitions, topic.replicas, topic_configs=topic.config
                        )
                    ]
                )
                sync.created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # someone else was quicker: it is theirs, not ours
            except KafkaError as err:
                sync.topics.append(
                    TopicReport(topic.name, 0, "Failed", False, f"creating it failed: {err}")
                )
        failed = {t.name for t in sync.topics}
        ours = created_before | set(sync.created)
        counts = self._wait_for_leaders([t.name for t in wanted if t.name not in failed])
        configs = self._dynamic_configs([t.name for t in wanted if t.name in counts])
        for topic in wanted:
            if topic.name in failed:
                continue
            sync.topics.append(
                self._converge(
                    topic, counts[topic.name], configs[topic.name], topic.name in ours, sync
                )
            )
        order = {t.name: i for i, t in enumerate(wanted)}
        sync.topics.sort(key=lambda r: order[r.name])
        return sync

    def _converge(
        self,
        topic: PipelineTopic,
        partitions: int,
        current: dict[str, str],
        ours: bool,
        sync: TopicSync,
    ) -> TopicReport:
        notes: list[str] = []
        state: TopicState = "Ready"
        if topic.partitions < partitions:
            state = "ShrinkRefused"
            notes.append(
                f"topic {topic.name} has {partitions} partitions and the spec asks for "
                f"{topic.partitions}: Kafka cannot remove partitions, so it keeps {partitions} "
                f"(set partitions: {partitions}, or delete the topic by hand to recreate it)"
            )
        elif topic.partitions > partitions:
            try:
                self._admin.create_partitions({topic.name: NewPartitions(topic.partitions)})
            except KafkaError as err:
                return TopicReport(
                    topic.name, partitions, "Failed", ours, f"adding partitions failed: {err}"
                )
            sync.changes.append(f"{topic.name}: partitions {partitions} -> {topic.partitions}")
            partitions = topic.partitions
        # A topic of ours carries exactly the spec's configs; on a topic that existed
        # before, configs the spec does not name are someone else's and stay.
        target = dict(topic.config) if ours else {**current, **topic.config}
        if target != current:
            try:
                self._admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic.name, configs=target)]
                )
            except KafkaError as err:
                return TopicReport(
                    topic.name, partitions, "Failed", ours, f"setting configs failed: {err}"
                )
            changed = sorted(
                k for k in target.keys() | current.keys() if target.get(k) != current.get(k)
            )
            sync.changes.append(f"{topic.name}: config {', '.join(changed)}")
        return TopicReport(topic.name, partitions, state, ours, "; ".join(notes))

    # -- deletion --------------------------------------------------------------------------

    def delete(self, names: Collection[str]) -> list[str]:
        """Delete these topics (the caller passes only those this operator created);
        ones already gone count as deleted."""
        deleted = []
        try:
            existing = self._partition_counts(list(names))
            for name in names:
                if name in existing:
                    with contextlib.suppress(UnknownTopicOrPartitionError):
                        self._admin.delete_topics([name])
                deleted.append(name)
        except KafkaError as err:
            raise self._error(err) from err
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def _describe(self, names: list[str]) -> Iterator[dict[str, Any]]:
        if names:
            yield from self._admin.describe_topics(names)

    def _partition_counts(self, names: list[str]) -> dict[str, int]:
        """Partitions of each of `names` that exists."""
        counts = {}
        for described in self._describe(names):
            if described["error_code"] == _UNKNOWN_TOPIC:
                continue
            if described["error_code"] != 0:
                raise KafkaAdminError(
                    f"describing topic {described['topic']} failed with Kafka error "
                    f"{described['error_code']}"
                )
            counts[described["topic"]] = len(described["partitions"])
        return counts

    def _wait_for_leaders(self, names: list[str]) -> dict[str, int]:
        """Partition counts once every partition has a leader: a topic just created is
        described without partitions for a moment."""
        deadline = time.monotonic() + self.timeout
        while True:
            described = list(self._describe(names))
            pending = [
                d["topic"]
                for d in described
                if d["error_code"] != 0
                or not d["partitions"]
                or any(p["leader"] < 0 for p in d["partitions"])
            ]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if pending:
            raise KafkaAdminError(
                f"topics without partition leaders after {self.timeout:.0f}s: {pending}"
            )
        return {d["topic"]: len(d["partitions"]) for d in described}

    def _dynamic_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        """Configs set on each topic itself (what alter_configs replaces), not defaults."""
        if not names:
            return {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        out: dict[str, dict[str, str]] = {}
        for response in self._admin.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                if resource["error_code"] != 0:
                    raise KafkaAdminError(
                        f"describing configs of topic {resource['resource_name']} failed: "
                        f"{resource['error_message']}"
                    )
                out[resource["resource_name"]] = {
                    _config_name(entry): entry["config_value"]
                    for entry in resource["config_entries"]
                    if entry["config_source"] == _DYNAMIC_TOPIC_CONFIG
                }
        return out


def _config_name(entry: dict[str, Any]) -> str:
    # kafka-python 2.x spells the field config_names; older releases config_name.
    return str(entry.get("config_names", entry.get("config_name")))
