"""The bound for the API rows: a bare ASGI app answering every request with the same JSON
bytes, served by stock uvicorn (httptools, the default event loop, one process, no
access log), or with `flowmill`, by the server `flowmill api` runs (the same uvicorn with
flowmill_api.server's protocol: header deadline, connection limit, one write per
response), so the rows can tell the server's part from the app's.

    python bare_asgi.py PORT BODY_FILE [uvicorn|flowmill]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

BODY = Path(sys.argv[2]).read_bytes()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    port = int(sys.argv[1])
    if sys.argv[3:] == ["flowmill"]:
        from flowmill_api.server import ServerLimits, server_config

        config = server_config(app, "127.0.0.1", port, ServerLimits(), log_level="warning",
                               access_log=False)  # fmt: skip
        uvicorn.Server(config).run()
    else:
        uvicorn.run(app, host="127.0.0.1", port=port, http="httptools",
                    log_level="warning", access_log=False)  # fmt: skip
