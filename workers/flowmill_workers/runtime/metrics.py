"""Prometheus metrics of a worker, labelled by pipeline and step (or source)."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flowmill.spec import consumer_group

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """One registry per worker so tests can run several workers in one process."""

    def __init__(self, pipeline: str, component: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["pipeline", "step"]
        self._values = (pipeline, component)
        # The consumer group too, so that the gauge maps 1:1 onto what kafka-exporter and
        # KMinion report (consumergroup/topic/partition) for the same lag.
        self._lag_values = (pipeline, component, consumer_group(pipeline, component))
        self._lag_reported: set[tuple[str, int]] = set()
        r = self.registry
        self.events_in = Counter("flowmill_events_in", "Events consumed.", labels, registry=r)
        self.events_out = Counter(
            "flowmill_events_out", "Events emitted to sinks.", labels, registry=r
        )
        # Exported (as 0) from the start, not from the first batch: Prometheus counts a
        # worker's replicas and restarts (its resets) by this series (flowmill_api.health),
        # and a rate or a reset needs the sample before the first increment.
        self.labels(self.events_out)
        self.events_filtered = Counter(
            "flowmill_events_filtered", "Events dropped by a filter.", labels, registry=r
        )
        self.events_failed = Counter(
            "flowmill_events_failed", "Events dead-lettered (bad input).", labels, registry=r
        )
        self.events_late = Counter(
            "flowmill_events_late", "Events after their window closed.", labels, registry=r
        )
        self.batch_seconds = Histogram(
            "flowmill_batch_seconds",
            "Time to process and commit one batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "flowmill_end_to_end_seconds",
            "From an event's Kafka timestamp to its results being durable.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "flowmill_consumer_lag",
            "Messages between the committed position and the partition's end.",
            [*labels, "group", "topic", "partition"],
            registry=r,
        )
        self.windows_invalid = Counter(
            "flowmill_windows_invalid",
            "Window aggregates marked instead of stored (a sum beyond a double).",
            labels,
            registry=r,
        )
        self.batches_dead_lettered = Counter(
            "flowmill_batches_dead_lettered",
            "Batches Redis refused deterministically, sent whole to the dead-letter topic.",
            labels,
            registry=r,
        )
        self.batches_fenced = Counter(
            "flowmill_batches_fenced",
            "Transactions aborted because the consumer group had moved on from the worker.",
            labels,
            registry=r,
        )
        self.write_retries = Counter(
            "flowmill_write_retries", "Retries of refused Redis writes.", labels, registry=r
        )
        self.state_rebuilds = Counter(
            "flowmill_state_rebuilds",
            "Partitions replayed from Kafka because their Redis state was lost.",
            labels,
            registry=r,
        )
        self.partitions_rebuilding = Gauge(
            "flowmill_partitions_rebuilding",
            "Partitions being rebuilt from Kafka after lost Redis state.",
            labels,
            registry=r,
        )
        self.partitions = Gauge(
            "flowmill_partitions_assigned", "Input partitions this worker owns.", labels, registry=r
        )

    def labels(self, metric: _Metric) -> _Metric:
        """The metric's child for this worker."""
        return metric.labels(*self._values)

    def report_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Report exactly these (topic, partition) lags: partitions reported before but
        missing now are removed, since a lost partition's last value would count on as lag
        (and keep the step's autoscaler from scaling down)."""
        for topic, partition in self._lag_reported - lags.keys():
            self.forget_lag(topic, partition)
        for (topic, partition), value in lags.items():
            self.lag(topic, partition, value)

    def lag(self, topic: str, partition: int, value: int) -> None:
        self._lag_reported.add((topic, partition))
        self.consumer_lag.labels(*self._lag_values, topic, str(partition)).set(value)

    def forget_lag(self, topic: str, partition: int) -> None:
        """Stop reporting a partition this worker lost."""
        self._lag_reported.discard((topic, partition))
        self.consumer_lag.remove(*self._lag_values, topic, str(partition))
