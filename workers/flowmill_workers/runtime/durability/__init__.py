"""The strategies that make a step's batches durable, and the one place that picks a
step's strategy from its spec."""

from __future__ import annotations

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.serving import watermark_fields
from flowmill.spec import Pipeline, StepSpec
from flowmill.spec.topology import consumer_group
from flowmill_workers.runtime.batch_compute import BatchCompute
from flowmill_workers.runtime.durability.base import Durability
from flowmill_workers.runtime.durability.kafka_transaction import KafkaTransaction
from flowmill_workers.runtime.durability.offset_commit import OffsetCommit
from flowmill_workers.runtime.durability.parquet_files import ParquetFiles
from flowmill_workers.runtime.durability.redis_checkpoint import RedisCheckpoint, WriteRetry
from flowmill_workers.runtime.metrics import WorkerMetrics

__all__ = [
    "Durability",
    "KafkaTransaction",
    "OffsetCommit",
    "ParquetFiles",
    "RedisCheckpoint",
    "WriteRetry",
    "choose_durability",
]


def choose_durability(
    pipeline: Pipeline,
    step: StepSpec,
    redis_url: str | None,
    compute: BatchCompute,
    metrics: WorkerMetrics | None = None,
    retry: WriteRetry | None = None,
    bootstrap_servers: str | None = None,
    security: KafkaClientSecurity = PLAINTEXT,
) -> Durability:
    """Where the step's position lives decides how it stays exact."""
    sink = step.sink
    group = consumer_group(pipeline.name, step.name)
    if compute.correlator is not None:
        if sink is not None and (sink.redis is not None or sink.parquet is not None):
            # The pending events are only exact inside a Kafka transaction, and a Redis
            # or Parquet write cannot join one.
            raise ValueError(
                f"step {step.name}: a join's sink must be a Kafka topic; "
                "write redis or parquet from a second step reading that topic"
            )
        return KafkaTransaction(pipeline.name, step.name, group, compute.correlator)
    if sink is None:
        return OffsetCommit()
    if sink.parquet is not None:
        return ParquetFiles(pipeline.name, step)
    if sink.redis is not None:
        return RedisCheckpoint(
            pipeline.name,
            step,
            redis_url,
            compute.windows,
            compute.latest,
            metrics,
            retry,
            sessions=compute.sessions,
            watermark_fields=watermark_fields(pipeline, step),
            idleness=compute.idleness,
            bootstrap_servers=bootstrap_servers,
            security=security,
        )
    return KafkaTransaction(pipeline.name, step.name, group, None)
