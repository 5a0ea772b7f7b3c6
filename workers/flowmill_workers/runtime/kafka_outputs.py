"""Hands a batch's Kafka records to the producer: the sink topic's outputs and the dead
letters. Every durability strategy sends them; only the Kafka transaction makes them
exactly-once (the others send them before their own commit: at least once)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from flowmill.spec import StepSpec
from flowmill_workers.runtime.batch_compute import PartitionResult
from flowmill_workers.runtime.dead_letter import DeadLetter, dead_letter_record

log = logging.getLogger("flowmill.worker")


class KafkaOutputs:
    """The step's producer and the topics its batches write."""

    def __init__(self, producer: AIOKafkaProducer, pipeline: str, step: StepSpec) -> None:
        self.producer = producer
        self.pipeline = pipeline
        self.step = step.name
        # A topic receiving the step's windows is written by sinks.window_emit instead.
        kafka = step.sink.kafka if step.sink and not step.emits_windows() else None
        self.sink_topic = kafka.topic if kafka else None
        self.dead_topic = step.dead_letter_topic()

    async def send(self, results: list[PartitionResult]) -> None:
        """Send every record of the batch and wait until all are acknowledged."""
        producer = self.producer
        futures = []
        for r in results:
            if self.sink_topic is not None:
                for key, value in r.outputs:
                    futures.append(await producer.send(self.sink_topic, value, key=key))
            if r.dead and self.dead_topic is None:
                log.warning(
                    "dropped %d bad event(s) (step has no deadLetter topic); first: %s",
                    len(r.dead),
                    r.dead[0].reason,
                )
                continue
            for dead in r.dead:
                payload, key, headers = dead_letter_record(dead, self.pipeline, self.step)
                futures.append(
                    await producer.send(self.dead_topic, payload, key=key, headers=headers)
                )
        if futures:
            await asyncio.gather(*futures)

    async def send_dead(self, dead: list[DeadLetter]) -> None:
        """Send dead letters and wait until all are acknowledged (dropped, with a
        warning, when the step has no dead-letter topic)."""
        if not dead:
            return
        if self.dead_topic is None:
            log.warning("dropped %d record(s) (no deadLetter topic): %s", len(dead),
                        dead[0].reason)  # fmt: skip
            return
        futures = []
        for d in dead:
            payload, key, headers = dead_letter_record(d, self.pipeline, self.step)
            futures.append(
                await self.producer.send(self.dead_topic, payload, key=key, headers=headers)
            )
        await asyncio.gather(*futures)
