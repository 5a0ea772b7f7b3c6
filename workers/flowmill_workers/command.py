"""`flowmill worker`: run one source or one step of a Pipeline (what each Deployment runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from flowmill.spec.launch import (
    ENV_REDIS_TIMEOUT,
    REDIS_TIMEOUT_S,
    STOP_GRACE_S,
    WORKER_METRICS_PORT,
)

if TYPE_CHECKING:
    from flowmill.kafka_security import KafkaClientSecurity
    from flowmill.spec import Pipeline
    from flowmill_workers.runtime.step_runner import StepRunner


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, metavar="FILE")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--step", metavar="NAME", help="run this step")
    group.add_argument("--source", metavar="NAME", help="run this source")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="Kafka brokers")
    parser.add_argument("--redis-url", metavar="URL", help="Redis for serving tables")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=WORKER_METRICS_PORT,
        help=f"port of /metrics, /healthz, /readyz (default {WORKER_METRICS_PORT}; 0 picks one)",
    )
    parser.add_argument(
        "--code-path",
        metavar="DIR",
        help="a Faust step's code directory, first on the import path (faust.code)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="most events per batch (default: WorkerConfig.batch_size, 10,000)",
    )
    parser.add_argument(
        "--write-attempts",
        type=int,
        default=5,
        help="tries of a Redis write failing the same way (a script error) before its batch "
        "is dead-lettered (default 5)",
    )
    parser.add_argument(
        "--write-give-up",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long Redis may refuse writes (OOM, loading, unreachable) before the worker "
        "exits non-zero (default 60)",
    )
    parser.add_argument(
        "--redis-timeout",
        type=_positive_seconds,
        # A string default goes through `type` too, so a bad variable is an error naming it.
        default=os.environ.get(ENV_REDIS_TIMEOUT, str(REDIS_TIMEOUT_S)),
        metavar="SECONDS",
        help="a Redis command unanswered this long fails and is retried like a refused write "
        f"(default: {ENV_REDIS_TIMEOUT}, else {REDIS_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=STOP_GRACE_S,
        metavar="SECONDS",
        help="after SIGTERM, how long the worker may take to finish its batch and close "
        f"before it exits anyway, naming what was not durable (default {STOP_GRACE_S})",
    )
    parser.set_defaults(handler=run)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number of seconds (--redis-timeout or {ENV_REDIS_TIMEOUT})"
        )
    return value


class _StopBeforeStart:
    """SIGTERM or SIGINT while the worker still imports and loads its Pipeline (seconds on a
    busy node), before the event loop's handlers exist: noted, and honoured as a clean stop
    (exit 0, nothing read) once the loop can, instead of Python's default of dying by the
    signal. Nothing is held yet that a stop would have to make durable."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        for sig in self.SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.requested = True

    def release(self) -> None:
        """Back to Python's defaults, for code that installs its own handlers later (Faust);
        a signal noted meanwhile is not lost: the caller checks `requested` after this."""
        for sig in self.SIGNALS:
            signal.signal(
                sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler
            )


def run(args: argparse.Namespace) -> int:
    early = _StopBeforeStart()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from flowmill import redact

    redact.install()  # e.g. an httpPoll URL's token, a Redis URL's password
    from flowmill.connections import ConnectionMissing
    from flowmill.kafka_security import KafkaSecurityInvalid
    from flowmill.manifest import PipelineInvalid, load_pipeline
    from flowmill_workers.sources.resume import OutputTopicMissing

    try:
        pipeline = load_pipeline(args.pipeline)
        if args.step and pipeline.spec.step(args.step).faust is not None:
            early.release()
            if early.requested:
                return _stopped_before_start()
            return _run_faust(args, pipeline)
        return asyncio.run(_run(args, pipeline, early))
    except (
        PipelineInvalid,
        ConnectionMissing,
        KeyError,
        OutputTopicMissing,
        KafkaSecurityInvalid,
    ) as err:
        print(f"flowmill worker: {err}", file=sys.stderr)
        return 1


def _run_faust(args: argparse.Namespace, pipeline: object) -> int:
    # Faust's worker owns the event loop (and the signal handlers), so no asyncio.run.
    from flowmill.connections import bootstrap_servers
    from flowmill.kafka_security import KafkaClientSecurity
    from flowmill.spec import Pipeline
    from flowmill_workers.faust_step import run_faust_step

    assert isinstance(pipeline, Pipeline)
    servers = bootstrap_servers(pipeline, args.bootstrap_servers)
    security = KafkaClientSecurity.from_env()
    return run_faust_step(pipeline, args.step, servers, args.metrics_port, args.code_path, security)


def _stopped_before_start() -> int:
    logging.getLogger("flowmill.worker").info("stop requested while starting; nothing was read")
    return 0


async def _run(args: argparse.Namespace, pipeline: object, early: _StopBeforeStart) -> int:
    from flowmill.connections import bootstrap_servers
    from flowmill.kafka_security import KafkaClientSecurity
    from flowmill.spec import Pipeline
    from flowmill_workers.runtime.http import Worker, serve_worker
    from flowmill_workers.runtime.kafka_admission import AdmittedWorker
    from flowmill_workers.runtime.shutdown import StopDeadline
    from flowmill_workers.runtime.source_runner import SourceConfig, SourceRunner

    assert isinstance(pipeline, Pipeline)
    servers = bootstrap_servers(pipeline, args.bootstrap_servers)
    security = KafkaClientSecurity.from_env()
    worker: Worker
    if args.source:
        pipeline.spec.source(args.source)  # KeyError names a missing source early
        worker = SourceRunner(pipeline, args.source, SourceConfig(servers, security))
        what = f"source {args.source}"
    else:
        worker = _step_runner(args, pipeline, servers, security)
        what = f"step {args.step}"
    worker = AdmittedWorker(worker, servers, security)
    stop = asyncio.Event()
    deadline = StopDeadline(what, args.stop_grace, worker.stop_state)

    def on_signal() -> None:
        if stop.is_set():
            deadline.expire_now()
        stop.set()
        deadline.start()

    loop = asyncio.get_running_loop()
    for sig in _StopBeforeStart.SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    if early.requested:  # checked after the loop's handlers took over, so none is missed
        return _stopped_before_start()
    try:
        await serve_worker(worker, stop, args.metrics_port)
    finally:
        deadline.finished()
    return 0


def _step_runner(
    args: argparse.Namespace, pipeline: Pipeline, servers: str, security: KafkaClientSecurity
) -> StepRunner:
    from flowmill.connections import redis_url
    from flowmill_workers.runtime.durability import WriteRetry
    from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig

    step = pipeline.spec.step(args.step)
    needs_redis = bool(step.sink and step.sink.redis)
    config = WorkerConfig(
        bootstrap_servers=servers,
        redis_url=redis_url(pipeline, args.redis_url) if needs_redis else None,
        batch_size=WorkerConfig.batch_size if args.batch_size is None else args.batch_size,
        write_retry=WriteRetry(
            attempts=args.write_attempts,
            give_up_s=args.write_give_up,
            reply_timeout_s=args.redis_timeout,
        ),
        security=security,
    )
    return StepRunner(pipeline, args.step, config)
