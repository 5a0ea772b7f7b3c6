"""`flowmill run` as a user runs it: the newcomer's command from the repo root, and a clean
exit on SIGINT and SIGTERM that leaves no process behind (checked in /proc)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import pytest
import yaml

from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.ports import free_port, port_open
from flowmill.local.redis import EmbeddedRedis
from tests.examples.harness import REPO, example_copy
from tests.examples.processes import alive, descendants, mentioning

FLOWMILL = str(Path(sys.executable).parent / "flowmill")


class Output:
    """A child's stdout, line by line, read on a thread so waits can be bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        for line in self.lines:
            if found := compiled.search(line):
                return found
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.lines.append(line)
            if found := compiled.search(line):
                return found
        raise TimeoutError(
            f"no line matching {pattern!r} in {timeout:.0f}s:\n" + "".join(self.lines[-30:])
        )

    def rest(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


def start(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    return proc, Output(proc.stdout)


def stop_and_check(
    proc: subprocess.Popen[str], out: Output, sig: signal.Signals, marker: str
) -> None:
    """Send `sig`, expect a clean exit, and no process of the run left anywhere."""
    tree = descendants(proc.pid)
    assert tree, "the run has no child processes"
    proc.send_signal(sig)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("flowmill run did not exit within 60s:\n" + out.rest()) from None
    text = out.rest()
    assert code == 0, text
    assert "flowmill run: stopped" in text
    # Reparented orphans would still be alive; so would anything started after the snapshot.
    deadline = time.monotonic() + 5
    while (
        left := {p for p in tree if alive(p)} | mentioning(marker)
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left after {sig.name}: " + "; ".join(
        f"{p}: {_cmdline(p)}" for p in sorted(left)
    )


def _cmdline(pid: int) -> str:
    """What a process left behind runs (to tell which part of the run it was)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return "(gone)"


@pytest.mark.usefixtures("kafka_installed", "redis_installed")
def test_newcomer_command_serves_the_api_and_stops_on_sigint() -> None:
    """The README's first command, from the repo root, on a machine with nothing running:
    it starts its own Kafka and Redis, and the API answers with StreamPulse's windows."""
    argv = [FLOWMILL, "run", "k8s/examples/streampulse.yaml"]
    if port_open(8000):  # someone already serves 8000 here; the command is otherwise the same
        argv += ["--api-port", str(free_port())]
    proc, out = start(argv, REPO)
    try:
        api_url = out.wait_for(r"API (http://\S+)", 90).group(1)
        out.wait_for(r"step/by-region ready", 60)
        with httpx.Client(base_url=api_url, timeout=5, trust_env=False) as http:
            deadline = time.monotonic() + 60
            while True:
                current = http.get(
                    "/pipelines/streampulse/tables/region_metrics/keys/1/windows/current"
                )
                if current.status_code == 200:
                    break
                assert time.monotonic() < deadline, current.text
                time.sleep(0.5)
            assert current.json()["values"]["trips"] >= 1
            assert http.get("/docs").status_code == 200
        stop_and_check(
            proc, out, signal.SIGINT, str(REPO / "k8s" / "examples" / "streampulse.yaml")
        )
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_every_child(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    if not redis_server.running:
        redis_server.start()
    manifest = example_copy("trips", tmp_path)
    argv = [
        FLOWMILL, "run", str(manifest),
        "--bootstrap-servers", kafka_broker.bootstrap_servers,
        "--redis-url", redis_server.url,
        "--api-port", "0",
        "--data-dir", str(tmp_path / "run"),
        "--status-interval", "1",
    ]  # fmt: skip
    proc, out = start(argv, tmp_path)
    try:
        # Every source, step and the API is up: a status line without "starting".
        out.wait_for(r"^\[trips-\S+\] (?!.*starting).*api ready", 90)
        assert len(descendants(proc.pid)) == 6  # 2 sources, 3 steps, the API
        stop_and_check(proc, out, signal.SIGTERM, str(manifest))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_children_die_with_a_killed_run(
    kafka_broker: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Even SIGKILL, which `flowmill run` cannot handle, leaves no orphan: the kernel
    sends each child SIGTERM when the run dies (PR_SET_PDEATHSIG)."""
    if not redis_server.running:
        redis_server.start()
    manifest = example_copy("streamlytics", tmp_path)
    argv = [
        FLOWMILL, "run", str(manifest),
        "--bootstrap-servers", kafka_broker.bootstrap_servers,
        "--redis-url", redis_server.url,
        "--api-port", "0",
        "--data-dir", str(tmp_path / "run"),
        "--status-interval", "1",
    ]  # fmt: skip
    proc, out = start(argv, tmp_path)
    try:
        out.wait_for(r"^\[streamlytics-\S+\] (?!.*starting).*api ready", 90)
        tree = descendants(proc.pid)
        # One process per source and step, and the API (read off the manifest, which grows).
        spec = yaml.safe_load(manifest.read_text())["spec"]
        assert len(tree) == len(spec.get("sources", [])) + len(spec.get("steps", [])) + 1
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        while (left := {p for p in tree if alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"children outlived the killed run: {sorted(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
