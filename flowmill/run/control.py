"""Pause, resume and replay a running `flowmill run` from another terminal
(`flowmill pause|resume|replay FILE`, docs/replay.md).

The run watches a folder of requests, `<data dir>/control/` (created when the run starts,
removed when it stops; only the user may write it): a command drops `<id>.json` there and
waits for the run's `<id>.reply.json`. The run carries a request out itself, because only
it may stop and start its children:

- pause: every source and step is stopped the way Ctrl-C stops them (each finishes and
  makes durable its batch in flight) and is not restarted; positions live with the
  results, so nothing is lost;
- resume: they start again and continue from those positions;
- replay: the step's workers are stopped, its positions reset (flowmill.replay), and it
  is started again (unless the run is paused: then on resume).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from flowmill.kafka_security import KafkaClientSecurity
from flowmill.manifest import PipelineInvalid, load_pipeline
from flowmill.replay import ReplayRefused, parse_time_ms, plan_replay, reset_step
from flowmill.run.plan import Connections
from flowmill.run.supervisor import Child, Supervisor
from flowmill.spec import Pipeline

log = logging.getLogger("flowmill.run")

CONTROL_DIR = "control"
POLL_S = 0.2
REQUEST_TIMEOUT_S = 120.0


class Control:
    """The run's side: a thread carrying out requests, one at a time."""

    def __init__(
        self,
        data_dir: Path,
        pipeline: Pipeline,
        supervisor: Supervisor,
        conn: Connections,
        security: KafkaClientSecurity,
        stop_grace: float,
        notify: Callable[[str], None],
    ) -> None:
        self.folder = data_dir / CONTROL_DIR
        self.pipeline = pipeline
        self.supervisor = supervisor
        self.conn = conn
        self.security = security
        self.stop_grace = stop_grace
        self.notify = notify
        self.paused = bool(pipeline.spec.paused)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowmill-control", daemon=True)

    def start(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self.folder.iterdir():  # an earlier run's, nobody waits for them
            stale.unlink(missing_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """After the supervisor stopped every child: children this thread started die
        with it (PR_SET_PDEATHSIG)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        with contextlib.suppress(OSError):
            for leftover in self.folder.iterdir():
                leftover.unlink(missing_ok=True)
            self.folder.rmdir()

    def workers(self, step: str | None = None) -> list[Child]:
        return [
            c
            for c in self.supervisor.children
            if c.spec.kind != "api"
            and (step is None or (c.spec.kind, c.spec.name) == ("step", step))
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            for request in sorted(self.folder.glob("*.json")):
                if request.name.endswith(".reply.json") or self._stop.is_set():
                    continue
                self._answer(request)
            self._stop.wait(POLL_S)

    def _answer(self, path: Path) -> None:
        try:
            body = orjson.loads(path.read_bytes())
            message = self.handle(body)
            reply = {"ok": True, "message": message}
        except (ReplayRefused, KeyError, ValueError) as err:
            reply = {"ok": False, "message": str(err).strip("'\"")}
        except Exception as err:  # the run goes on; the command says what failed
            log.exception("control request %s failed", path.name)
            reply = {"ok": False, "message": f"{type(err).__name__}: {err}"}
        self.notify(f"control: {reply['message']}")
        tmp = path.with_name(f".{path.stem}.tmp")
        tmp.write_bytes(orjson.dumps(reply))
        os.replace(tmp, path.with_name(f"{path.stem}.reply.json"))
        path.unlink(missing_ok=True)

    def handle(self, body: dict[str, Any]) -> str:
        action = body.get("action")
        if action == "pause":
            self.paused = True
            self.supervisor.pause(self.workers(), self.stop_grace)
            return f"paused {self.pipeline.name}: every source and step stopped, positions kept"
        if action == "resume":
            self.paused = False
            self.supervisor.resume(self.workers())
            return f"resumed {self.pipeline.name}"
        if action == "replay":
            return self._replay(str(body["step"]), body.get("fromTimeMs"), body.get("fromOffset"))
        raise ValueError(f"unknown request {action!r}")

    def _replay(self, step: str, from_time_ms: int | None, from_offset: int | None) -> str:
        workers = self.workers(step)
        if not workers:
            raise ValueError(f"no step {step!r} in Pipeline {self.pipeline.name}")
        plan = plan_replay(
            self.pipeline,
            step,
            self.conn.bootstrap_servers,
            from_time_ms=from_time_ms,
            from_offset=from_offset,
            security=self.security,
        )
        self.supervisor.pause(workers, self.stop_grace)
        try:
            plan = _reset_when_left(self.pipeline, plan, self.conn, self.security)
        finally:
            if not self.paused:
                self.supervisor.resume(workers)
        return f"replaying step {step} (offsets {plan.describe()})"


def _reset_when_left(
    pipeline: Pipeline, plan: Any, conn: Connections, security: KafkaClientSecurity
) -> Any:
    """A worker that stopped has left its group; the coordinator may take a moment to
    say so, and refuses the offsets meanwhile."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return reset_step(pipeline, plan, conn.bootstrap_servers, conn.redis_url, security)
        except ReplayRefused as err:
            if "still running" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- the commands ------------------------------------------------------------------


def request(
    data_dir: Path, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S
) -> dict[str, Any]:
    """Hand a request to the run using `data_dir` and wait for its reply."""
    folder = data_dir / CONTROL_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no flowmill run is using {data_dir} (no {folder}): start one, or pass the "
            "--data-dir it was given"
        )
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(orjson.dumps(body))
    os.replace(tmp, folder / f"{name}.json")
    reply_path = folder / f"{name}.reply.json"
    deadline = time.monotonic() + timeout
    while not reply_path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not answer within {timeout:.0f} s")
        time.sleep(POLL_S / 2)
    reply: dict[str, Any] = orjson.loads(reply_path.read_bytes())
    reply_path.unlink(missing_ok=True)
    return reply


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the Pipeline manifest the run was given")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="the run's --data-dir (default .flowmill/<pipeline>)"
    )
    parser.add_argument(
        "--timeout", type=float, default=REQUEST_TIMEOUT_S, metavar="SECONDS", help="wait this long"
    )


def configure_pause(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.set_defaults(handler=lambda args: _send(args, {"action": "pause"}))


def configure_resume(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.set_defaults(handler=lambda args: _send(args, {"action": "resume"}))


def configure_replay(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--step", required=True, help="the step to recompute")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--from",
        dest="from_time",
        metavar="TIME",
        help="from the first record at or after this time (ISO 8601 or epoch ms, by Kafka "
        "record time)",
    )
    start.add_argument(
        "--from-offset", type=int, metavar="N", help="from offset N of every input partition"
    )
    parser.set_defaults(handler=_replay_handler)


def _replay_handler(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"action": "replay", "step": args.step}
    if args.from_time is not None:
        try:
            body["fromTimeMs"] = parse_time_ms(args.from_time)
        except ValueError:
            print(f"--from: not a time: {args.from_time!r} (ISO 8601 or epoch ms)")
            return 2
    else:
        body["fromOffset"] = args.from_offset
    return _send(args, body)


def _send(args: argparse.Namespace, body: dict[str, Any]) -> int:
    try:
        pipeline = load_pipeline(args.file)
    except PipelineInvalid as err:
        print(err)
        return 2
    data_dir = (
        Path(args.data_dir).resolve() if args.data_dir else Path.cwd() / ".flowmill" / pipeline.name
    )
    try:
        reply = request(data_dir, body, args.timeout)
    except (FileNotFoundError, TimeoutError) as err:
        print(err)
        return 1
    print(reply["message"])
    return 0 if reply["ok"] else 1
