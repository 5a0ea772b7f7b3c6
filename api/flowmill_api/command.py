"""`flowmill api`: argument parsing only; the handler imports the app when it runs, so
`flowmill --help` stays fast."""

from __future__ import annotations

import argparse
import gc
import sys

from flowmill.spec.launch import API_PORT, ENV_REDIS_URL


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from flowmill.connections import ConnectionMissing, redis_url
    from flowmill.manifest import PipelineInvalid, load_pipelines
    from flowmill_api.app import create_app
    from flowmill_api.settings import ApiSettings

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
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        proxy_headers=True,
    )
    return 0
