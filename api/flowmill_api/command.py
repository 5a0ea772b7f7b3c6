"""`flowmill api`: argument parsing only; the handler imports the app when it runs."""

from __future__ import annotations

import argparse
import sys


def _not_built(args: argparse.Namespace) -> int:
    print("flowmill api: not built yet (tracked in issue #5); nothing was run.", file=sys.stderr)
    return 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, metavar="FILE")
    parser.set_defaults(handler=_not_built)
