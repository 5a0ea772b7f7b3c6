"""`flowmill api` as a user runs it: a process serving one or several manifests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from flowmill.local.ports import free_port
from flowmill.local.redis import EmbeddedRedis
from tests.api.harness import build_pipeline


def write_manifest(path: Path, prefix: str) -> str:
    p = build_pipeline(prefix)
    path.write_text(yaml.safe_dump(p.to_manifest()))
    return p.name


def flowmill(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flowmill.cli", "api", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serves_several_pipelines_until_terminated(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    if not redis_server.running:
        redis_server.start()
    first = write_manifest(tmp_path / "a.yaml", "cli-a")
    second = write_manifest(tmp_path / "b.yaml", "cli-b")
    port = free_port()
    proc = flowmill(
        "--pipeline", str(tmp_path / "a.yaml"),
        "--pipeline", str(tmp_path / "b.yaml"),
        "--port", str(port),
        "--redis-url", redis_server.url,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "flowmill api did not become ready"
            time.sleep(0.1)
        names = [
            p["name"] for p in httpx.get(f"http://127.0.0.1:{port}/pipelines").json()["pipelines"]
        ]
        assert names == [first, second]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see why it ended.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_bad_manifest_exits_non_zero_naming_the_problem(tmp_path: Path) -> None:
    missing = flowmill("--pipeline", str(tmp_path / "nope.yaml"), "--redis-url", "redis://x:1")
    _, err = missing.communicate(timeout=30)
    assert missing.returncode == 1 and "nope.yaml" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: flowmill.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: x}\nspec: {}\n"
    )
    invalid = flowmill("--pipeline", str(bad), "--redis-url", "redis://x:1")
    _, err = invalid.communicate(timeout=30)
    assert invalid.returncode == 1 and "spec.topics" in err

    write_manifest(tmp_path / "ok.yaml", "cli-c")
    no_redis = subprocess.run(
        [sys.executable, "-m", "flowmill.cli", "api", "--pipeline", str(tmp_path / "ok.yaml")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert no_redis.returncode == 1 and "--redis-url" in no_redis.stderr
