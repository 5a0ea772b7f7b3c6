"""The API's stop is bounded: uvicorn bounds the wait for open connections but not the
app's own shutdown, so a shutdown that never returns must still end the process, by its
deadline and saying why, before a kubelet or `flowmill run` has to SIGKILL it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from flowmill.spec.launch import EXIT_UNCLOSED
from flowmill_api.server import LIFESPAN_STOP_S
from tests.harness.waiting import wait_for

# An app whose lifespan shutdown hangs, as a client waiting on a server that is gone.
APP = textwrap.dedent(
    """
    import asyncio, sys
    import uvicorn
    from flowmill_api.server import BoundedServer

    async def app(scope, receive, send):
        if scope["type"] != "lifespan":
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                print("started", flush=True)
            else:
                await asyncio.Event().wait()

    config = uvicorn.Config(app, port=0, host="127.0.0.1", timeout_graceful_shutdown=1)
    BoundedServer(config).run()
    """
)


def test_a_hanging_shutdown_ends_at_the_deadline_with_its_code() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", APP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        wait_for(lambda: proc.stdout.readline().strip() == "started", 30, "the app to start")  # type: ignore[union-attr]
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=1 + LIFESPAN_STOP_S + 10)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert code == EXIT_UNCLOSED, err
    assert took >= 1 + LIFESPAN_STOP_S - 0.5, f"exited after {took:.1f}s, before the deadline"
    assert f"did not stop within {1 + LIFESPAN_STOP_S:g}s" in err, err
