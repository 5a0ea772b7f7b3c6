"""`flowmill run` arguments; the handler imports the runner only when it runs, so other
commands do not pay for rich, httpx and the Kafka admin client."""

from __future__ import annotations

import argparse

from flowmill.spec.launch import API_PORT


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the Pipeline manifest")
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="use this Kafka instead of starting an embedded broker",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis instead of starting one (a URL with a password: set "
        "FLOWMILL_REDIS_URL, or FLOWMILL_REDIS_PASSWORD, instead: argv shows in ps)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=API_PORT,
        help=f"port of the API (default {API_PORT}; 0 picks one)",
    )
    parser.add_argument("--no-api", action="store_true", help="do not start the API")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="logs and the embedded broker's data (default .flowmill/<pipeline>)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between status lines when stdout is not a terminal (default 5)",
    )
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from flowmill.run.console import run_command

    return run_command(args)
