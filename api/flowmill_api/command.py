"""`flowmill api`: argument parsing only; the handler imports the app when it runs, so
`flowmill --help` stays fast."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys

from flowmill.spec.launch import (
    API_HEADER_TIMEOUT_S,
    API_MAX_CONNECTIONS,
    API_PORT,
    ENV_REDIS_URL,
    STOP_GRACE_S,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline",
        required=True,
        action="append",
        metavar="FILE",
        help="a Pipeline manifest to serve (repeat to serve several; a file may hold several)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=API_PORT, help=f"port (default {API_PORT})")
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"Redis holding the tables (default: {ENV_REDIS_URL}, then spec.redis.url)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        metavar="RPS",
        help="requests per second per client (default: spec.api.rateLimit; unset: none)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow this origin by CORS (repeatable; default: spec.api.corsOrigins)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off: metrics count them)"
    )
    parser.add_argument(
        "--trusted-proxies",
        default="",
        metavar="NETWORKS",
        help="comma-separated addresses or networks (10.0.0.0/8,127.0.0.1) whose "
        "X-Forwarded-For is believed for the client address (the rate limit's key); "
        "default: none, the socket's peer is the client",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after "
        f"it opened or after its previous response (default {API_HEADER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help=f"open connections per process; beyond, new ones get 503 (default {API_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=STOP_GRACE_S,
        metavar="SECONDS",
        help=f"after SIGTERM, how long open requests and streams may last (default {STOP_GRACE_S})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    from flowmill import redact
    from flowmill.connections import ConnectionMissing, redis_url
    from flowmill.manifest import PipelineInvalid, load_pipelines
    from flowmill_api.app import create_app
    from flowmill_api.server import (
        BoundedServer,
        ServerLimits,
        parse_trusted_proxies,
        server_config,
    )
    from flowmill_api.settings import ApiSettings

    redact.install()
    try:
        pipelines = [p for path in args.pipeline for p in load_pipelines(path)]
        urls = {redis_url(p, args.redis_url) for p in pipelines}
        if len(urls) > 1:
            raise ConnectionMissing(
                "the Pipelines name different Redis URLs; one API process reads one Redis: "
                "pass --redis-url or run one API per Redis"
            )
        settings = ApiSettings.for_pipelines(
            pipelines,
            rate_limit=args.rate_limit,
            cors_origins=tuple(args.cors_origin) if args.cors_origin else None,
        )
        app = create_app(pipelines, urls.pop(), settings)
        limits = ServerLimits(trusted_proxies=parse_trusted_proxies(args.trusted_proxies))
        if args.header_timeout is not None:
            limits = dataclasses.replace(limits, header_timeout_s=args.header_timeout)
        if args.max_connections is not None:
            limits = dataclasses.replace(limits, max_connections=args.max_connections)
    except (PipelineInvalid, ConnectionMissing, ValueError) as err:
        print(f"flowmill api: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"flowmill api: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    # Startup objects (models, routes, the manifests) never die: keep the collector from
    # rescanning them, and collect less often; both shorten the pauses behind tail latency.
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    config = server_config(
        app,
        args.host,
        args.port,
        limits,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=max(1, int(args.stop_grace)),
    )
    BoundedServer(config).run()
    return 0
