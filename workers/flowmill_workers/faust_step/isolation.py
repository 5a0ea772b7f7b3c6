"""The Faust step reads only committed records, as every built-in step does.

flowmill's steps write their outputs in Kafka transactions (a batch together with its
offsets), so a worker killed mid-batch leaves an aborted transaction whose records stay
in the log, and the batch is written again by the next owner. A consumer reading
read_uncommitted sees both copies. Faust reads read_committed only under its own
`exactly_once` guarantee, which would also make its producer transactional (one per
partition) and its Tables' recovery slower; flowmill keeps Faust at least once and sets
the isolation of the consumer Faust builds instead.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver

_MARK = "_flowmill_read_committed"


def read_committed() -> None:
    """Make every Faust worker consumer of this process read committed records only."""
    original = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, _MARK, False):
        return

    def create(self: driver.AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = original(self, transport)
        # aiokafka builds its fetcher from this attribute when the consumer starts, and
        # Faust starts it only after this returns.
        consumer._isolation_level = "read_committed"
        return consumer

    setattr(create, _MARK, True)
    driver.AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
