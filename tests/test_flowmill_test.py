"""`flowmill test` end to end, as CI would run it: the command on each example and its
k8s/examples/<name>.test.yaml, on the session's broker and Redis (--bootstrap-servers,
--redis-url), so the one Kafka start is shared.

The examples' expected values were worked out by hand from their fixtures (the test files
show the arithmetic); here the command must pass them, fail a wrong expectation with a
diff naming table, key, window and field, catch an aggregate broken in the manifest, and
pass again while crash injection kills workers mid-stream.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "k8s" / "examples"
EXAMPLE_NAMES = sorted(p.name.removesuffix(".test.yaml") for p in EXAMPLES.glob("*.test.yaml"))


def _argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "flowmill.cli", "test", *map(str, args)]


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_broker: EmbeddedKafka,
    redis_server: EmbeddedRedis,
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every invocation the tests below look at, started at once, a few at a time: each
    spends most of its time waiting (worker imports, group joins, the quiet period), so
    running them side by side takes a fraction of running them in turn."""
    if not redis_server.running:  # another module may have stopped it to test an outage
        redis_server.start()
    servers = [
        "--bootstrap-servers",
        kafka_broker.bootstrap_servers,
        "--redis-url",
        redis_server.url,
    ]
    tmp = tmp_path_factory.mktemp("flowmill-test")
    commands = {name: _argv(EXAMPLES / f"{name}.yaml") for name in EXAMPLE_NAMES}

    text = (EXAMPLES / "streampulse.test.yaml").read_text()
    # 10 + 20 + 5 is 35, not 36; and two trips were dead-lettered, not three.
    wrong = text.replace("revenue: 35.0", "revenue: 36.0", 1).replace("count: 2\n", "count: 3\n", 1)
    assert wrong.count("36.0") == 1 and "count: 3" in wrong
    (tmp / "wrong.test.yaml").write_text(wrong)
    commands["wrong"] = _argv(EXAMPLES / "streampulse.yaml", "--test", tmp / "wrong.test.yaml")

    manifest = (EXAMPLES / "streampulse.yaml").read_text()
    broken = manifest.replace("revenue: {sum: fare}", "revenue: count")
    assert broken != manifest
    (tmp / "broken").mkdir()
    (tmp / "broken" / "streampulse.yaml").write_text(broken)
    shutil.copy(EXAMPLES / "streampulse.test.yaml", tmp / "broken" / "streampulse.test.yaml")
    commands["broken"] = _argv(tmp / "broken" / "streampulse.yaml")

    commands["crash"] = _argv(
        EXAMPLES / "streampulse.yaml", "--crash", "random", "--seed", "11", "--kills", "2"
    )
    pool = ThreadPoolExecutor(max_workers=4)
    futures = {
        name: pool.submit(
            subprocess.run, [*argv, *servers], capture_output=True, text=True, timeout=400, cwd=REPO
        )
        for name, argv in commands.items()
    }
    yield futures
    pool.shutdown(wait=True)


def result(
    runs: dict[str, Future[subprocess.CompletedProcess[str]]], name: str
) -> subprocess.CompletedProcess[str]:
    done = runs[name].result()
    print(done.stdout, done.stderr)
    return done


def test_every_example_has_tests() -> None:
    manifests = {p.stem for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".test.yaml")}
    assert set(EXAMPLE_NAMES) == manifests


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_tests_pass(
    name: str, runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    done = result(runs, name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^(\d+) passed, 0 failed in ", done.stdout, re.M)
    assert "PASS  " in done.stdout and "FAIL" not in done.stdout


def test_a_wrong_expectation_fails_with_a_diff(
    runs: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    done = result(runs, "wrong")
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL  one-minute windows per region, out-of-order and late trips" in out
    assert (
        "table region_metrics, key '1', window 2025-08-15T10:00:00Z: revenue: expected 36.0, got 35"
        in out
    )
    assert "dead letters trip-events-dlq: expected 3, got 2" in out
    # Only what is wrong is reported: the other windows and aggregates matched.
    assert out.count("table region_metrics") == 1
    # The file's second test (final minutes and their hourly rollup) is unchanged.
    assert "1 passed, 1 failed" in out


def test_a_broken_aggregate_is_caught(
    runs: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    done = result(runs, "broken")
    assert done.returncode == 1
    # Each window's revenue is now its trip count.
    lines = re.findall(r"^ +table region_metrics, (.*)$", done.stdout, re.M)
    assert sorted(lines) == [
        "key '1', window 2025-08-15T10:00:00Z: revenue: expected 35.0, got 3",
        "key '1', window 2025-08-15T10:01:00Z: revenue: expected 15.0, got 1",
        "key '1', window 2025-08-15T10:02:00Z: revenue: expected 30.0, got 1",
        "key '2', window 2025-08-15T10:00:00Z: revenue: expected 20.0, got 2",
    ]


def test_same_results_with_workers_killed_mid_stream(
    runs: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    done = result(runs, "crash")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "crash injection: seed 11" in done.stdout
    plan = re.search(r"crash plan: (.*)$", done.stdout, re.M)
    assert plan is not None and plan.group(1).count(" at ") == 2
    assert re.search(r"killed (source|step)/\S+ \(pid \d+\)", done.stdout)
    assert "2 passed, 0 failed" in done.stdout


def test_an_invalid_test_file_names_each_field(tmp_path: Path) -> None:
    tests = tmp_path / "bad.test.yaml"
    tests.write_text(
        """
tests:
  - name: bad
    fixtures:
      - source: nope
        events: '{"a": 1}'
      - topic: trip-events
        events: |
          {"trip_id": "t1"}
          not json
    expect:
      tables:
        region_metrics:
          windows: [{key: "1", start: yesterday}]
        nope: {count: 1}
"""
    )
    argv = _argv(EXAMPLES / "streampulse.yaml")
    done = subprocess.run([*argv, "--test", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (
        "tests[0].expect.tables.region_metrics.windows[0].start: not an ISO 8601 time or epoch milliseconds: 'yesterday'"
        in done.stderr
    )
    tests.write_text(tests.read_text().replace("start: yesterday", "start: 2025-08-15T10:00:00Z"))
    done = subprocess.run([*argv, "--test", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    err = done.stderr
    assert (
        "tests[0].fixtures[0].source: no source 'nope' in Pipeline streampulse (sources: replay)"
        in err
    )
    assert "tests[0].fixtures[1].events line 2: not JSON" in err
    assert "tests[0].expect.tables.nope: no table 'nope' in Pipeline streampulse" in err
    assert "starting Kafka" not in done.stdout
