"""`flowmill worker`: run one source or one step of a Pipeline (what each Deployment runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from flowmill.spec.launch import WORKER_METRICS_PORT


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
    parser.add_argument("--batch-size", type=int, default=5000, help="events per batch")
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from flowmill.connections import ConnectionMissing
    from flowmill.manifest import PipelineInvalid, load_pipeline
    from flowmill_workers.sources.resume import OutputTopicMissing

    try:
        pipeline = load_pipeline(args.pipeline)
        return asyncio.run(_run(args, pipeline))
    except (PipelineInvalid, ConnectionMissing, KeyError, OutputTopicMissing) as err:
        print(f"flowmill worker: {err}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, pipeline: object) -> int:
    from flowmill.connections import bootstrap_servers, redis_url
    from flowmill.spec import Pipeline
    from flowmill_workers.runtime.durability import WriteRetry
    from flowmill_workers.runtime.http import serve_worker
    from flowmill_workers.runtime.step_runner import StepRunner, WorkerConfig

    assert isinstance(pipeline, Pipeline)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = bootstrap_servers(pipeline, args.bootstrap_servers)
    if args.source:
        from flowmill_workers.runtime.source_runner import run_source

        pipeline.spec.source(args.source)  # KeyError names a missing source early
        await run_source(pipeline, args.source, servers, stop, args.metrics_port)
        return 0
    step = pipeline.spec.step(args.step)
    needs_redis = bool(step.sink and step.sink.redis)
    config = WorkerConfig(
        bootstrap_servers=servers,
        redis_url=redis_url(pipeline, args.redis_url) if needs_redis else None,
        batch_size=args.batch_size,
        write_retry=WriteRetry(attempts=args.write_attempts, give_up_s=args.write_give_up),
    )
    await serve_worker(StepRunner(pipeline, args.step, config), stop, args.metrics_port)
    return 0
