"""A worker waits, unready and saying why, while Kafka refuses its credentials.

A wrong password or an untrusted certificate is not fixed by restarting: a crash loop
would only hide the cause in aiokafka's "Unable to bootstrap". Instead the worker checks
its security once before starting its clients and, while Kafka refuses it, answers
/readyz with the reason, logs it (again only when it changes) and retries with backoff:
a KafkaUser whose credentials Strimzi is still creating is admitted without a restart.
"""

from __future__ import annotations

import asyncio
import logging

from flowmill.kafka_security import KafkaClientSecurity, refusal
from flowmill_workers.runtime.http import Worker
from flowmill_workers.runtime.metrics import WorkerMetrics
from flowmill_workers.runtime.shutdown import StopState

log = logging.getLogger("flowmill.worker")

FIRST_RETRY_S = 2.0
LONGEST_RETRY_S = 60.0


class AdmittedWorker:
    """`worker`, started only once Kafka accepts `security` (PLAINTEXT is not checked)."""

    def __init__(
        self,
        worker: Worker,
        bootstrap_servers: str,
        security: KafkaClientSecurity,
        *,
        first_retry_s: float = FIRST_RETRY_S,
    ) -> None:
        self.worker = worker
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.first_retry_s = first_retry_s
        self.refused: str | None = None
        """Why Kafka refuses this worker now; None once admitted."""
        self.metrics: WorkerMetrics = worker.metrics
        self.stop_state: StopState = worker.stop_state

    def ready(self) -> tuple[bool, str]:
        if self.refused is not None:
            return False, self.refused
        return self.worker.ready()

    async def start(self) -> None:
        if self.security.protocol != "PLAINTEXT":
            delay = self.first_retry_s
            while (reason := await refusal(self.bootstrap_servers, self.security)) is not None:
                if reason != self.refused:
                    log.error("%s; retrying every %.0f s at most", reason, LONGEST_RETRY_S)
                self.refused = reason
                await asyncio.sleep(delay)
                delay = min(delay * 2, LONGEST_RETRY_S)
            if self.refused is not None:
                log.info("Kafka accepts %s now", self.security.describe())
            self.refused = None
        await self.worker.start()

    async def run(self, stop: asyncio.Event) -> None:
        await self.worker.run(stop)

    async def stop(self) -> None:
        await self.worker.stop()
