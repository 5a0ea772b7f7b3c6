"""The floor for a Python consumer: aiokafka's getmany, every record counted, nothing
decoded (flowmill's own Kafka client, with the worker's fetch sizes)."""

from __future__ import annotations

import asyncio

from _common import Timer, config, emit
from aiokafka import AIOKafkaConsumer


async def main() -> None:
    cfg = config()
    consumer = AIOKafkaConsumer(
        cfg["topic"],
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    timer, seen, total = Timer(), 0, cfg["total"]
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if batch:
                timer.begin()
            for records in batch.values():
                seen += len(records)
        timer.stop()
    finally:
        await consumer.stop()
    emit(seen, timer, None)


asyncio.run(main())
