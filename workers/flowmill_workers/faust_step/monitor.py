"""The Faust step's Prometheus series: the ones every worker exports (events in and out,
partitions, and the consumer lag the step's autoscaler reads, with the same names and
labels: runtime/metrics.py), and Faust's own monitor (faust.sensors.prometheus:
faust_messages_received, faust_events_runtime_ms, faust_table_operations, ...) in the same
registry."""

from __future__ import annotations

from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP, Message, ProducerT

from flowmill_workers.runtime.metrics import WorkerMetrics

FAUST_PREFIX = "faust"


class StepMonitor(PrometheusMonitor):
    """Faust's Prometheus monitor that also counts the step's events in flowmill's series."""

    def __init__(self, metrics: WorkerMetrics, input_topic: str, outputs: frozenset[str]) -> None:
        super().__init__(metrics=FaustMetrics.create(metrics.registry, FAUST_PREFIX))
        self.step_metrics = metrics
        self.input_topic = input_topic
        self.outputs = outputs
        self.taken_in = 0
        """Input events taken in so far (read by the stall watch's thread)."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        super().on_message_in(tp, offset, message)
        if tp.topic == self.input_topic:
            self.step_metrics.labels(self.step_metrics.events_in).inc()
            self.taken_in += 1

    def on_send_initiated(
        self, producer: ProducerT, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        if topic in self.outputs:
            self.step_metrics.labels(self.step_metrics.events_out).inc()
        return super().on_send_initiated(producer, topic, message, keysize, valsize)
