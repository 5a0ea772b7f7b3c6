"""Running a Faust step: the user's app bound to the step (binding.py), the worker's HTTP
side (/healthz, /readyz, /metrics on the worker port, runtime/http.py), and the Faust
worker owning the event loop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections.abc import Callable, Set
from typing import Any

import faust
from faust.types import TP
from mode import BaseSignalT

from flowmill.kafka_security import PLAINTEXT, KafkaClientSecurity
from flowmill.spec import Pipeline, duration_seconds, faust_app_id
from flowmill_workers.faust_step.binding import BoundApp, FaustStepError, bind_app
from flowmill_workers.faust_step.lag import LagReporter
from flowmill_workers.faust_step.monitor import StepMonitor
from flowmill_workers.faust_step.stall import StallWatch
from flowmill_workers.runtime.http import WorkerHttp
from flowmill_workers.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def run_faust_step(
    pipeline: Pipeline,
    step_name: str,
    bootstrap_servers: str,
    metrics_port: int | None,
    code_path: str | None = None,
    security: KafkaClientSecurity = PLAINTEXT,
) -> int:
    """Run the step's agent until stopped; 1 (with the reason on stderr) when the code does
    not fit the spec, before anything connects."""
    step = pipeline.spec.step(step_name)
    assert step.faust is not None, f"step {step_name} is not a Faust step"
    metrics = WorkerMetrics(pipeline.name, step_name)
    data_dir = tempfile.mkdtemp(prefix=f"faust-{step_name}-")
    try:
        bound = bind_app(pipeline, step, bootstrap_servers, data_dir, code_path, security)
    except FaustStepError as err:
        print(f"flowmill worker: {err}", file=sys.stderr)
        return 1
    monitor = StepMonitor(metrics, bound.input_topic, bound.output_topics)
    bound.app.monitor = monitor
    stall = StallWatch(
        duration_seconds(step.faust.stall_timeout),
        ready=lambda: ready(bound)[0],
        taken_in=lambda: monitor.taken_in,
    )
    lag = LagReporter(
        metrics,
        faust_app_id(pipeline.name, step_name),
        bound.input_topic,
        bootstrap_servers,
        _owned_partitions(bound),
        security,
        stall=stall,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if metrics_port is not None:
        http = WorkerHttp(metrics.registry, lambda: ready(bound))
        loop.run_until_complete(http.start(metrics_port))
    bound.app.finalize()
    bound.app.worker_init()
    bound.app.worker_init_post_autodiscover()
    worker = faust.Worker(bound.app, loop=loop, loglevel="INFO", quiet=True)
    lag.start()
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        lag.stop()
    return 0


def ready(bound: BoundApp) -> tuple[bool, str]:
    """Ready once the group gave this worker partitions of the input and their Tables are
    restored from the changelogs (Faust holds the stream until then)."""
    app = bound.app
    if not app.started or app.rebalancing:
        return False, "joining the consumer group"
    if app.in_recovery:
        return False, "restoring Tables from their changelogs"
    owned = [tp for tp in app.consumer.assignment() if tp.topic == bound.input_topic]
    if not owned:
        return False, "no partition of the input assigned"
    return True, f"{len(owned)} partition(s) assigned"


def _owned_partitions(bound: BoundApp) -> Callable[[], frozenset[int]]:
    """The input partitions this worker owns, as Faust's rebalance signals tell them (a
    snapshot the lag thread reads without touching the loop's consumer); none while a
    rebalance is under way."""
    app = bound.app
    owned: frozenset[int] = frozenset()

    def mine(tps: Set[TP]) -> frozenset[int]:
        return frozenset(tp.partition for tp in tps if tp.topic == bound.input_topic)

    # Faust sends (app, the partitions) to its signals' receivers.
    def assigned(_: Any, /, *args: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        nonlocal owned
        owned = mine(args[0])  # the whole new assignment

    def revoked(_: Any, /, *args: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        nonlocal owned
        owned = owned - mine(args[0])

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
    return lambda: frozenset() if app.rebalancing else owned
