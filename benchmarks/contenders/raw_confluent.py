"""confluent-kafka (librdkafka) batch consume(), every record counted, nothing decoded;
the fetch settings Quix Streams gives its consumer."""

from __future__ import annotations

from _common import Timer, config, emit
from confluent_kafka import Consumer


def main() -> None:
    cfg = config()
    consumer = Consumer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": cfg["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.queue.backoff.ms": 100,  # Quix Streams' consumer default
        }
    )
    consumer.subscribe([cfg["topic"]])
    timer, seen, total = Timer(), 0, cfg["total"]
    try:
        while seen < total:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            if messages:
                timer.begin()
            for m in messages:
                if m.error() is None:
                    seen += 1
        timer.stop()
    finally:
        consumer.close()
    emit(seen, timer, None)


main()
