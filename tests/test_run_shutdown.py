"""`flowmill run` leaves nothing behind however it ends (issue #15 part 5).

- Ctrl-C of `flowmill run x.yaml | cat` sends SIGINT to the whole process group: `cat`
  dies at once, so the run's prints fail with EPIPE. Before, that skipped the stop, and
  the source worker, orphaned under PID 1, wrote reconnect errors for ever.
- kill -9 of the run: its children die with it (PR_SET_PDEATHSIG, then their own bounded
  stop with Redis gone), and the next run removes the Redis directory it left in the temp
  folder.

Each run gets a temp folder of its own (TMPDIR), so "no process left" is checked by
scanning /proc for command lines naming the test's folder, and "no directory left" by
listing that temp folder. The session's broker is used; Redis is the run's embedded one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.temp_dirs import PREFIXES
from flowmill.spec.launch import STOP_GRACE_S, TERMINATION_GRACE_PERIOD_S
from tests.examples.harness import example_copy
from tests.examples.processes import mentioning
from tests.examples.test_run_command import Output
from tests.harness.waiting import wait_for

FLOWMILL = str(Path(sys.executable).parent / "flowmill")
READY = r"^\[streamlytics-\S+\] (?!.*starting).*api ready"
STOP_TIMEOUT = STOP_GRACE_S + 15.0
"""The run waits up to the workers' grace for each stage of its stop."""


def _run_argv(manifest: Path, bootstrap: str, data_dir: Path) -> list[str]:
    return [FLOWMILL, "run", str(manifest), "--bootstrap-servers", bootstrap,
            "--api-port", "0", "--data-dir", str(data_dir), "--status-interval", "1"]  # fmt: skip


def _left_dirs(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(PREFIXES))


def _start(
    argv: list[str], tmp_path: Path, temp: Path, **popen: object
) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(temp), "COLUMNS": "200"},
        **popen,  # type: ignore[call-overload]
    )
    assert proc.stdout is not None
    return proc, Output(proc.stdout)


def _commands(pids: set[int]) -> list[str]:
    """What each process is, for a failure to name what was left."""
    found = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        found.append(f"{pid} [{state}] {cmd[:160]}")
    return found


def _wait_gone(marker: Path, timeout: float, what: str) -> None:
    try:
        wait_for(lambda: not mentioning(str(marker)), timeout, f"{what} to exit")
    except TimeoutError:
        left = _commands(mentioning(str(marker)))
        raise AssertionError(f"{what} still running after {timeout:.0f}s: {left}") from None


def _nothing_left(marker: Path, temp: Path, timeout: float) -> None:
    def clean() -> bool:
        return not mentioning(str(marker)) and not _left_dirs(temp)

    try:
        wait_for(clean, timeout, "no process or temp dir of the run")
    except TimeoutError:
        raise AssertionError(
            f"left after {timeout:.0f}s: processes {_commands(mentioning(str(marker)))}, "
            f"dirs {_left_dirs(temp)}"
        ) from None


def test_sigint_to_the_group_of_run_piped_to_cat_leaves_nothing(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    manifest = example_copy("streamlytics", tmp_path)
    command = " ".join(_run_argv(manifest, kafka_broker.bootstrap_servers, tmp_path / "run"))
    # A shell of its own session runs the pipeline in one process group, as a terminal's.
    shell, out = _start(["sh", "-c", f"{command} | cat"], tmp_path, temp, start_new_session=True)
    try:
        out.wait_for(READY, 120)
        assert _left_dirs(temp), "the run's Redis made no directory in TMPDIR"
        os.killpg(shell.pid, signal.SIGINT)
        _nothing_left(tmp_path, temp, STOP_TIMEOUT)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)


def test_a_killed_run_takes_its_children_and_the_next_run_removes_its_dirs(
    kafka_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    manifest = example_copy("streamlytics", tmp_path)
    argv = _run_argv(manifest, kafka_broker.bootstrap_servers, tmp_path / "run")
    first, out = _start(argv, tmp_path, temp)
    try:
        out.wait_for(READY, 120)
        stale = _left_dirs(temp)
        assert stale, "the run's Redis made no directory in TMPDIR"
        first.kill()
        first.wait(10)
        # Only the run itself is gone: its children (and their Redis) die with it, each by
        # its own stop deadline at the latest (the slack is for a loaded machine).
        _wait_gone(tmp_path, TERMINATION_GRACE_PERIOD_S + 15, "the children of the killed run")
        assert _left_dirs(temp) == stale, "kill -9 should have left the Redis dir"
    finally:
        if first.poll() is None:
            first.kill()
    second, out = _start(argv, tmp_path, temp)
    try:
        out.wait_for(READY, 120)
        now = _left_dirs(temp)
        assert not set(stale) & set(now), f"stale dirs not removed: {stale} still in {now}"
        started = time.monotonic()
        second.send_signal(signal.SIGINT)
        assert second.wait(STOP_TIMEOUT) == 0, out.rest()
        assert time.monotonic() - started < STOP_TIMEOUT
        _nothing_left(tmp_path, temp, 10)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
