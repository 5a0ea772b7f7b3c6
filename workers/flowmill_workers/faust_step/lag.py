"""The Faust step's lag series (flowmill_consumer_lag, which the step's autoscaler reads),
measured from a thread of its own.

What a partition's lag is here: its log end offset minus the offset the step's group
committed, the events this worker has not processed yet. Not the consumer's position:
Faust fetches ahead of its agent into a stream buffer (thousands of events, about 7,700
trips seen on the node), so end minus position says 0 while the agent still has all of
those to do, and the autoscaler would not scale. Faust commits only what its agent
acknowledged (consumer.ack, then the offset after the first gap), so the committed offset
is what was processed; it trails the agent by one commit interval (broker_commit_interval,
2.8 s by default).

Why a thread: a Faust timer runs on the event loop the agent shares, and a busy agent
(blocking code between its awaits) delays it, so the series went stale exactly when the
step was behind. This thread asks the broker itself (kafka-python: the end offsets and the
group's committed offsets, with the worker's Kafka security) and sets the gauge, whatever
the loop does; /metrics only reads the gauge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill_workers.faust_step.stall import StallWatch
from flowmill_workers.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0
"""How often the lag gauge is refreshed (the built-in steps report after every batch)."""
REQUEST_TIMEOUT_MS = 15_000
"""Of each offset request; above kafka-python's 10 s session timeout, which it requires."""
SMALL_LAG = 50
"""Up to this many offsets behind, the records there are counted one by one (a few
hundred bytes read): a transaction's commit marker takes an offset but is no event, and
Faust commits the offset after the last event it processed, so a partition written by an
exactly-once step would otherwise stay 1 behind for good once the agent caught up."""
MAX_POLLS, POLL_MS = 10, 200


class LagReporter:
    """Refreshes the lag of the input partitions this worker owns every `interval`
    seconds, in a daemon thread; `owned()` says which (empty while rebalancing: the
    previous owner's partitions must not be counted twice across members)."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        group: str,
        input_topic: str,
        bootstrap_servers: str,
        owned: Callable[[], frozenset[int]],
        security: KafkaClientSecurity = PLAINTEXT,
        interval: float = LAG_INTERVAL_S,
        stall: StallWatch | None = None,
    ) -> None:
        self.metrics = metrics
        self.group = group
        self.input_topic = input_topic
        self.bootstrap_servers = bootstrap_servers
        self.owned = owned
        self.security = security
        self.interval = interval
        self.stall = stall
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowmill-faust-lag", daemon=True)
        self._consumer: Any = None
        self._admin: Any = None
        self._last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_MS / 1000 + 1)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.refresh()
                    self._last_error = ""
                except Exception as err:  # kafka-python's errors share no useful base
                    # The broker is away or the group is rebalancing: keep the last values
                    # (a missing series would read as no lag) and try again next time.
                    if repr(err) != self._last_error:
                        log.warning("lag not refreshed (%r); retrying", err)
                        self._last_error = repr(err)
                    self._close()
        finally:
            self._close()

    def refresh(self) -> dict[int, int]:
        """Set the gauge to the lag of every owned partition now; returns it."""
        owned = sorted(self.owned())
        self.metrics.labels(self.metrics.partitions).set(len(owned))
        if not owned:
            self.metrics.report_lag({})
            if self.stall is not None:
                self.stall.observe({}, {})
            return {}
        consumer, admin = self._clients()
        tps = [TopicPartition(self.input_topic, p) for p in owned]
        ends = consumer.end_offsets(tps)
        committed = admin.list_consumer_group_offsets(self.group, partitions=tps)
        done = {
            tp: m.offset for tp, m in committed.items() if m.offset is not None and m.offset >= 0
        }
        uncommitted = [tp for tp in tps if tp not in done]
        # Never committed: Faust starts such a partition at its beginning
        # (consumer_auto_offset_reset earliest, binding.py), so all of it is to do.
        starts = consumer.beginning_offsets(uncommitted) if uncommitted else {}
        begin = {tp: done.get(tp, starts.get(tp, 0)) for tp in tps}
        counted = self._records_between(consumer, begin, ends)
        lags = {
            tp.partition: counted[tp] if tp in counted else max(0, ends[tp] - begin[tp])
            for tp in tps
        }
        self.metrics.report_lag({(self.input_topic, p): lag for p, lag in lags.items()})
        if self.stall is not None:
            self.stall.observe(lags, {tp.partition: at for tp, at in begin.items()})
        return lags

    @staticmethod
    def _records_between(
        consumer: Any, begin: dict[Any, int], ends: dict[Any, int]
    ) -> dict[Any, int]:
        """The records from `begin` to the end of the partitions at most SMALL_LAG offsets
        behind (only those whose end this reached)."""
        small = {tp: (at, ends[tp]) for tp, at in begin.items() if 0 < ends[tp] - at <= SMALL_LAG}
        if not small:
            return {}
        consumer.assign(list(small))
        for tp, (at, _) in small.items():
            consumer.seek(tp, at)
        counts = dict.fromkeys(small, 0)
        for _ in range(MAX_POLLS):
            if all(consumer.position(tp) >= end for tp, (_, end) in small.items()):
                break
            for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
                end = small[tp][1]
                counts[tp] += sum(1 for r in records if r.offset < end)
        # kafka-python moves the position past control batches; where it did not get to
        # the end, the offsets' difference stands.
        return {tp: n for tp, n in counts.items() if consumer.position(tp) >= small[tp][1]}

    def _clients(self) -> tuple[Any, Any]:
        if self._consumer is None or self._admin is None:
            options: dict[str, Any] = {
                "bootstrap_servers": self.bootstrap_servers,
                "client_id": f"{self.group}.lag",
                "request_timeout_ms": REQUEST_TIMEOUT_MS,
                # A TLS handshake and a SCRAM exchange on a busy node outlast the 2 s default.
                "api_version_auto_timeout_ms": REQUEST_TIMEOUT_MS,
                **self.security.kwargs(),
            }
            # No group: this consumer only asks for offsets, it never joins the step's group.
            self._consumer = KafkaConsumer(enable_auto_commit=False, **options)
            self._admin = KafkaAdminClient(**options)
        return self._consumer, self._admin

    def _close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a client of a broker that went away
                    log.debug("closing a lag client failed", exc_info=True)
        self._consumer = self._admin = None
