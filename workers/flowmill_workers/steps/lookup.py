"""Lookup joins: enrich each event with one entry of a reference table.

The reference is a topic read into memory by a consumer of its own (every partition, no
group, read_committed), from its beginning: a compacted reference topic as it is, or the
input of a latest-state step of the Pipeline through that step's own processing, so the
lookup sees what that table holds. Changelog semantics: a later record of a key replaces
the earlier one; a tombstone (or the latest step's deleteWhen) removes the key.

Before each batch the worker reads the reference up to its end offsets of that moment
(`catch_up`), so every reference change committed before the batch was fetched is
applied to it. A worker reads nothing of its input until the reference has at least one
record: an empty reference is almost always one not written yet (both start together),
and enriching against it would drop or dead-letter everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from flowmill.kafka_security import KafkaClientSecurity
from flowmill.spec import Pipeline, StepSpec
from flowmill_workers.events import BadEvent, Event, decode, get_field, key_of
from flowmill_workers.steps.latest import LatestTable
from flowmill_workers.steps.transform import build_stages, run_stages

log = logging.getLogger("flowmill.worker")

Apply = Callable[[ConsumerRecord], None]


class ReferenceTable:
    """The reference of one step's lookup, kept in memory and current."""

    def __init__(self, pipeline: Pipeline, step: StepSpec) -> None:
        spec = step.lookup
        if spec is None:
            raise ValueError(f"step {step.name} has no lookup")
        self.topic, owner = pipeline.spec.lookup_reference(step)
        self.what = f"table {spec.table}" if spec.table else f"topic {spec.topic}"
        self.partitions = [
            TopicPartition(self.topic, p) for p in range(pipeline.spec.topic(self.topic).partitions)
        ]
        self.key_field = spec.key
        self.fields = spec.fields
        self.prefix = spec.prefix
        self.on_missing = spec.on_missing
        self.rows: dict[str, Event] = {}
        self.records = 0
        """Reference records read so far (the wait for a non-empty reference counts them,
        not rows: a reference of tombstones only is not empty)."""
        self.skipped = 0
        self._apply: Apply = self._topic_record if owner is None else self._table_record(owner)
        self.consumer: AIOKafkaConsumer | None = None

    # -- reading the reference --------------------------------------------------------

    def _topic_record(self, record: ConsumerRecord) -> None:
        if record.key is None:
            self.skipped += 1
            return
        key = record.key.decode("utf-8", "replace")
        if record.value is None:
            self.rows.pop(key, None)
            return
        try:
            self.rows[key] = decode(record.value)
        except BadEvent:
            self.skipped += 1

    def _table_record(self, owner: StepSpec) -> Apply:
        # The latest step's own stages, key and row: the same code that writes the table.
        stages = build_stages(owner)
        latest = LatestTable(owner)

        def apply(record: ConsumerRecord) -> None:
            try:
                for event in run_stages(stages, decode(record.value)):
                    key = key_of(event, latest.key_field)
                    row = latest.row(event)
                    if row is None:
                        self.rows.pop(key, None)
                    else:
                        self.rows[key] = row
            except BadEvent:
                self.skipped += 1  # the latest step dead-letters it: not in its table either

        return apply

    async def start(self, bootstrap_servers: str, security: KafkaClientSecurity) -> None:
        """Connect and read the reference to its end."""
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **security.kwargs(),
        )
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)
        await self.catch_up()
        log.info(
            "lookup %s: %d entries from %d record(s) of %s",
            self.what,
            len(self.rows),
            self.records,
            self.topic,
        )

    async def catch_up(self) -> None:
        """Apply every reference record committed up to now."""
        consumer = self.consumer
        assert consumer is not None
        ends = await consumer.end_offsets(self.partitions)
        remaining = {tp for tp in self.partitions if await consumer.position(tp) < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for records in batch.values():
                for record in records:
                    self._apply(record)
                self.records += len(records)
            for tp in list(remaining):
                # >=: a transaction's commit marker is stepped over without a record.
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)

    @property
    def loaded(self) -> bool:
        """The reference has records (see the module docstring)."""
        return self.records > 0

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    # -- enriching events -------------------------------------------------------------

    def enrich(self, event: Event) -> list[Event]:
        """The event with the reference fields (a stage of the step)."""
        try:
            key = key_of(event, self.key_field)
        except BadEvent:
            key = None
        row = None if key is None else self.rows.get(key)
        if row is None:
            if self.on_missing == "drop":
                return []
            if self.on_missing == "deadLetter":
                raise BadEvent(
                    f"lookup: {self.what} has no entry for {self.key_field}={key}"
                    if key is not None
                    else f"lookup: missing key field {self.key_field!r}"
                )
            return [event]
        names = self.fields if self.fields is not None else list(row)
        # A latest table's dotted `fields` are stored under their dotted names.
        copied = {
            self.prefix + name: row[name] if name in row else get_field(row, name) for name in names
        }
        return [{**event, **copied}]
