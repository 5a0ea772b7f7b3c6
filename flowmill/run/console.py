"""The `flowmill run` command: a LocalRun with a live status table, stopped by Ctrl-C or
SIGTERM.

Signals: the first SIGINT/SIGTERM starts a clean shutdown (SIGTERM to every child, wait,
SIGKILL stragglers, stop Redis and Kafka); a second one while stopping kills the
children at once. A signal during start-up aborts it the same clean way.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from types import FrameType

from rich.console import Console
from rich.live import Live

from flowmill import redact
from flowmill.run.local_run import LocalRun
from flowmill.run.status_table import RunStatus, plain, render


class _Signals:
    """SIGINT/SIGTERM: abort start-up, then request a stop, then force it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.started = False
        self.run: LocalRun | None = None
        self.count = 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if not self.started:
            # Start-up is blocking (the broker takes seconds): unwind it; LocalRun.start
            # stops whatever it had started.
            raise KeyboardInterrupt
        if self.count > 1 and self.run is not None:
            self.run.kill()
        self.stop.set()


def run_command(args: argparse.Namespace) -> int:
    from flowmill.local import ComponentMissing
    from flowmill.manifest import PipelineInvalid

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    redact.install()
    # The admin client that creates topics logs every refused connection; a failure is
    # reported once, by the run, with what to do.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    console = Console()
    err = Console(stderr=True)
    signals = _Signals()
    signals.install()
    try:
        run = LocalRun(
            args.file,
            bootstrap_servers=args.bootstrap_servers,
            redis_url=args.redis_url,
            api_port=args.api_port,
            with_api=not args.no_api,
            data_dir=args.data_dir,
            notify=lambda message: console.print(f"[bold]flowmill run:[/bold] {message}"),
        )
    except (PipelineInvalid, OSError) as error:
        err.print(f"flowmill run: {error}", markup=False, highlight=False, soft_wrap=True)
        return 1
    signals.run = run
    try:
        run.start()
    except KeyboardInterrupt:
        err.print("flowmill run: interrupted while starting; stopped")
        return 130
    except (ComponentMissing, RuntimeError, TimeoutError, OSError) as error:
        err.print(
            f"flowmill run: could not start: {error}", markup=False, highlight=False, soft_wrap=True
        )
        return 1
    signals.started = True
    try:
        if console.is_terminal:
            _live_table(run, console, signals.stop)
        else:
            _log_lines(run, console, signals.stop, args.status_interval)
    except BrokenPipeError:
        pass  # stdout's reader is gone (as a shell pipe would, stop): below
    finally:
        # Ctrl-C of `flowmill run x.yaml | tee log` also ends tee: printing then fails
        # with EPIPE, and must not keep the run from stopping its children.
        _say(console, "flowmill run: stopping ...")
        run.stop()
        _say(console, "flowmill run: stopped")
    return 0


def _say(console: Console, line: str) -> None:
    try:
        console.print(line)
        sys.stdout.flush()
    except OSError:
        # Whoever read stdout is gone: drop what is left, or Python's flush at exit
        # would fail again and turn the exit code into 120.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _live_table(run: LocalRun, console: Console, stop: threading.Event) -> None:
    with Live(render(run.status()), console=console, refresh_per_second=4) as live:
        while not stop.wait(1.0):
            live.update(render(run.status()))


def _log_lines(run: LocalRun, console: Console, stop: threading.Event, interval: float) -> None:
    status = run.status()
    for line in _where(status):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    while not stop.wait(interval):
        console.print(plain(run.status()), markup=False, highlight=False, soft_wrap=True)
        sys.stdout.flush()


def _where(status: RunStatus) -> list[str]:
    lines = [f"flowmill run: Pipeline {status.pipeline} on Kafka {status.bootstrap_servers}"]
    if status.api_url:
        lines.append(f"flowmill run: API {status.api_url} (docs {status.docs_url})")
        lines.append(f"flowmill run: dashboard {status.dashboard_url}")
        if status.health_url:
            lines.append(f"flowmill run: health {status.health_url}")
    lines += [f"flowmill run: {extra}" for extra in status.extras]
    lines.append(f"flowmill run: logs in {status.log_dir}")
    return lines
