"""`flowmill render` and `flowmill operator`: argument parsing only, so `flowmill --help`
stays fast; the handlers import the operator when they run."""

from __future__ import annotations

import argparse
import sys


def _not_built(name: str) -> int:
    print(
        f"flowmill {name}: not built yet (tracked in issue #3); nothing was run.", file=sys.stderr
    )
    return 2


def configure_render(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE")
    parser.set_defaults(handler=lambda args: _not_built("render"))


def configure_operator(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=lambda args: _not_built("operator"))
