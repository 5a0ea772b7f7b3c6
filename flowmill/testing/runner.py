"""Runs a test file: one Kafka broker and one Redis for all its tests (started here unless
given), then for each test its own copy of the Pipeline (flowmill.testing.plan) run by
flowmill run's LocalRun without the API, fed its fixtures, waited on until every step has
consumed everything, and compared with its expectations.

"Consumed everything" is read from flowmill run's status table, that is from the workers'
own /metrics and /readyz: every fixture source has finished, every step is ready with a
consumer lag of 0, and nothing (events in or out, restarts) has moved for QUIET_S
seconds; a step writing to another step's topic makes that one's lag non-zero again
before the quiet period ends.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from flowmill.local.ports import tail
from flowmill.manifest import FieldError, PipelineInvalid, load_pipelines
from flowmill.run.local_run import LocalRun
from flowmill.run.status_table import RunStatus
from flowmill.spec import Pipeline
from flowmill.testing import compare, observe
from flowmill.testing.crash import DEFAULT_KILLS, Crasher, crash_plan, killable
from flowmill.testing.plan import CasePlan, check, plan_case, table_kinds
from flowmill.testing.spec import TestFile, TestFileInvalid, load_test_file

QUIET_S = 2.5
"""Seconds of no movement, with every lag 0, after which a test's pipeline is done; the
status table refreshes every second, so this spans at least two scrapes."""
DEFAULT_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
"""A test's workers have nothing left to flush once they are idle."""


@dataclass
class CaseResult:
    name: str
    failures: list[str]
    seconds: float
    crashes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Options:
    bootstrap_servers: str | None = None
    redis_url: str | None = None
    crash_seed: int | None = None
    """Set: crash injection with this seed."""
    kills: int = DEFAULT_KILLS
    timeout: float = DEFAULT_TIMEOUT_S
    only: list[str] = field(default_factory=list)
    """Names of the tests to run (all when empty)."""
    keep: bool = False
    """Keep the scratch folder (copies, fixtures, worker logs)."""


@dataclass
class Loaded:
    pipeline: Pipeline
    tests: TestFile
    test_path: Path
    manifest: Path


def load(manifest: Path, test_path: Path) -> Loaded:
    """Manifest and test file, checked against each other; PipelineInvalid or
    TestFileInvalid say what is wrong, and where, before anything starts."""
    tests = load_test_file(test_path)
    pipelines = load_pipelines(manifest)
    if tests.pipeline is not None:
        chosen = [p for p in pipelines if p.name == tests.pipeline]
        if not chosen:
            names = ", ".join(p.name for p in pipelines)
            raise TestFileInvalid(
                str(test_path),
                [FieldError("pipeline", f"no Pipeline {tests.pipeline!r} in {manifest} ({names})")],
            )
    elif len(pipelines) > 1:
        names = ", ".join(p.name for p in pipelines)
        raise TestFileInvalid(
            str(test_path),
            [FieldError("pipeline", f"{manifest} holds several Pipelines ({names}): name one")],
        )
    else:
        chosen = pipelines
    check(chosen[0], tests, test_path)
    return Loaded(chosen[0], tests, test_path, manifest)


class TestRun:
    """One `flowmill test` invocation."""

    def __init__(self, loaded: Loaded, options: Options, say: Callable[[str], None]) -> None:
        self.loaded = loaded
        self.options = options
        self.say = say
        self.crash = options.crash_seed is not None

    def run(self) -> list[CaseResult]:
        cases = [
            (i, c)
            for i, c in enumerate(self.loaded.tests.tests)
            if not self.options.only or c.name in self.options.only
        ]
        if not cases:
            known = ", ".join(repr(c.name) for c in self.loaded.tests.tests)
            raise TestFileInvalid(
                str(self.loaded.test_path),
                [FieldError("tests", f"no test named {self.options.only} (tests: {known})")],
            )
        scratch = Path(tempfile.mkdtemp(prefix="flowmill-test-"))
        try:
            with self._servers(scratch) as (bootstrap, redis_url):
                return [
                    self._case(i, scratch / f"test-{i}", bootstrap, redis_url) for i, _ in cases
                ]
        finally:
            if self.options.keep:
                self.say(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def _servers(self, scratch: Path) -> Iterator[tuple[str, str]]:
        from flowmill.local.kafka import EmbeddedKafka
        from flowmill.local.redis import EmbeddedRedis

        with contextlib.ExitStack() as stack:
            bootstrap = self.options.bootstrap_servers
            if bootstrap is None:
                self.say("starting Kafka (embedded, KRaft) ...")
                kafka = stack.enter_context(EmbeddedKafka())
                bootstrap = kafka.bootstrap_servers
            redis_url = self.options.redis_url
            if redis_url is None:
                redis_url = stack.enter_context(EmbeddedRedis()).url
            yield bootstrap, redis_url

    def _case(self, index: int, scratch: Path, bootstrap: str, redis_url: str) -> CaseResult:
        loaded = self.loaded
        case = loaded.tests.tests[index]
        crash = self.options.crash_seed is not None
        plan, manifest = plan_case(
            loaded.pipeline, loaded.manifest.parent, case, index, loaded.test_path, scratch, crash
        )
        started = time.monotonic()
        kills = []
        if self.options.crash_seed is not None:
            kills = crash_plan(
                self.options.crash_seed, case.name, killable(plan.pipeline), self.options.kills
            )
            self.say(
                f"      crash plan: {', '.join(f'{k.label} at {k.at:.2f}s' for k in kills) or 'nothing to kill'}"
            )
        run = LocalRun(
            manifest,
            bootstrap_servers=bootstrap,
            redis_url=redis_url,
            with_api=False,
            data_dir=scratch / "run",
            notify=lambda message: None,
            stop_grace=STOP_GRACE_S,
        )
        failures: list[str] = []
        crashes: list[str] = []
        try:
            run.start()
            assert run.supervisor is not None
            crasher = Crasher(run.supervisor, kills, lambda line: self.say(f"      {line}"))
            try:
                self._wait_consumed(run, crasher)
            except (TimeoutError, WorkerExited) as err:
                failures.append(str(err))
            finally:
                crasher.stop()
                crashes = crasher.done
            if not failures:
                failures += self._compare(plan, bootstrap, redis_url, dedupe_dead=crash)
        except PipelineInvalid as err:
            failures.append(str(err))
        except Exception as err:  # a run that cannot start is this test's failure, said why
            failures.append(f"the pipeline did not run: {type(err).__name__}: {err}")
        finally:
            run.stop()
        result = CaseResult(case.name, failures, time.monotonic() - started, crashes)
        self._report(result, run)
        return result

    def _wait_consumed(self, run: LocalRun, crasher: Crasher) -> None:
        deadline = time.monotonic() + self.options.timeout
        quiet_since = time.monotonic()
        previous: tuple[object, ...] | None = None
        while True:
            status = run.status()
            now = time.monotonic()
            if crasher.started is None and status.all_ready:
                crasher.start()
            if not self.crash:
                exits = _unexpected_exits(run)
                if exits:
                    raise WorkerExited("\n".join(exits))
            idle = crasher.finished() and _idle(status)
            movement = tuple(
                (r.label, r.events_in, r.events_out, r.restarts, r.pid) for r in status.rows
            )
            if not idle or movement != previous:
                quiet_since = now
                previous = movement
            elif now - quiet_since >= QUIET_S:
                return
            if now > deadline:
                raise TimeoutError(_not_done(status, self.options.timeout))
            time.sleep(0.2)

    def _compare(
        self, plan: CasePlan, bootstrap: str, redis_url: str, dedupe_dead: bool
    ) -> list[str]:
        expect = plan.case.expect
        tolerance = (
            plan.case.tolerance if plan.case.tolerance is not None else self.loaded.tests.tolerance
        )
        kinds = table_kinds(plan.pipeline)
        out: list[str] = []
        name = plan.pipeline.name
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            for table, expected in expect.tables.items():
                if kinds[table].kind == "window":
                    windows = observe.window_table(client, name, table)
                    out += compare.window_table(table, expected, windows, tolerance)
                else:
                    entries = observe.latest_table(client, name, table)
                    out += compare.latest_table(table, expected, entries, tolerance)
        wanted = list(expect.dead_letters) + list(expect.topics)
        records = observe.read_topics(bootstrap, [plan.topic(t) for t in wanted])
        for topic, expected_dead in expect.dead_letters.items():
            dead = records[plan.topic(topic)]
            if dedupe_dead:
                # A Redis-sink step sends its dead letters at least once: a kill between
                # the send and its checkpoint repeats them. One per consumed record.
                seen: dict[tuple[str, ...], observe.Record] = {}
                for r in dead:
                    seen.setdefault(r.origin, r)
                dead = list(seen.values())
            out += compare.dead_letters(topic, expected_dead, dead, tolerance)
        for topic, expected_topic in expect.topics.items():
            out += compare.topic(topic, expected_topic, records[plan.topic(topic)], tolerance)
        return out

    def _report(self, result: CaseResult, run: LocalRun) -> None:
        mark = "PASS" if result.passed else "FAIL"
        self.say(f"{mark}  {result.name}  ({result.seconds:.1f} s)")
        for line in result.failures:
            self.say("      " + line.replace("\n", "\n      "))
        if not result.passed and self.options.keep:
            self.say(f"      worker logs: {run.log_dir}")


def _unexpected_exits(run: LocalRun) -> list[str]:
    """A worker that exited without being killed by the test fails the test at once, even
    if its restart would get the results right: on a cluster it would crash-loop."""
    if run.supervisor is None:
        return []
    return [
        f"{child.spec.label} exited with code {child.last_exit}; its log ends:\n  "
        + tail(child.log_path, 8).replace("\n", "\n  ")
        for child in run.supervisor.children
        if child.last_exit is not None
    ]


class WorkerExited(RuntimeError):
    """A source or step exited on its own during a test without crash injection."""


def _idle(status: RunStatus) -> bool:
    for row in status.rows:
        if row.kind == "source" and row.state != "done":
            return False
        if row.kind == "step" and (row.state != "ready" or row.lag != 0):
            return False
    return True


def _not_done(status: RunStatus, timeout: float) -> str:
    lines = [f"not every event was consumed after {timeout:.0f} s:"]
    for row in status.rows:
        lag = "-" if row.lag is None else f"{row.lag:.0f}"
        events = "-" if row.events_in is None else f"{row.events_in:.0f}"
        lines.append(
            f"  {row.label}: {row.state}, events in {events}, lag {lag} {row.detail}".rstrip()
        )
        if row.state not in ("ready", "done"):
            lines.append("    " + tail(Path(row.log_path), 5).replace("\n", "\n    "))
    return "\n".join(lines)
