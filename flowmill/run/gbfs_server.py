"""A local GBFS feed for examples and tests: nothing here reaches the internet, so the
Citi Bike example polls this instead of gbfs.citibikenyc.com.

A feed folder holds `feed.json`: the system, its regions and stations (what
`station_information.json` and `system_regions.json` serve), and how station_status
changes: a new snapshot every `period` seconds, `snapshots` of them (0: forever, the
last one is then served unchanged), drawn from `seed`. Snapshot k of a station is a
pure function of (seed, station, k), so a feed started twice serves the same data.
The clock starts at the first station_status request: snapshot k's `last_updated` is that
moment plus k * period, so a status poller that starts late (workers take seconds to start,
and the station_information poller's pod may be Ready long before it) still sees the whole
timeline from its first snapshot on. The static feeds say `last_updated` = that moment
once it has come, and the time of the request before.

Any path ending in one of the GBFS file names is served, so a manifest can keep the real
feed's path (`/gbfs/en/station_status.json`) and change only the host.

`flowmill run` serves it on a thread; `flowmill gbfs-feed` serves it on its own, e.g. as a
small Deployment and Service next to a Pipeline on a cluster (k8s/examples/cluster/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("flowmill.run.gbfs")

GBFS_VERSION = "2.3"
HEALTH_PATH = "/healthz"
DEFAULT_PORT = 8917
"""Where `flowmill run` and `flowmill gbfs-feed` serve a feed unless told otherwise."""
FEEDS = ("gbfs", "system_information", "system_regions", "station_information", "station_status")


@dataclass(frozen=True)
class FeedConfig:
    """The contents of a feed folder's feed.json."""

    system: dict[str, Any]
    regions: list[dict[str, Any]]
    stations: list[dict[str, Any]]
    period: int
    snapshots: int
    seed: int

    @classmethod
    def load(cls, folder: Path) -> FeedConfig:
        raw = json.loads((folder / "feed.json").read_text())
        period = int(raw.get("period", 30))
        if period < 1:
            raise ValueError(f"{folder / 'feed.json'}: period must be >= 1 second")
        return cls(
            system=raw["system"],
            regions=raw.get("regions", []),
            stations=raw["stations"],
            period=period,
            snapshots=int(raw.get("snapshots", 0)),
            seed=int(raw.get("seed", 0)),
        )


class StatusTimeline:
    """Station status snapshots: a random walk per station, the same for the same seed."""

    def __init__(self, config: FeedConfig, started: int) -> None:
        self.config = config
        self.started = started
        self._states: list[dict[str, dict[str, int]]] = []

    def index_at(self, now: float) -> int:
        k = max(0, math.floor((now - self.started) / self.config.period))
        if self.config.snapshots > 0:
            k = min(k, self.config.snapshots - 1)
        return k

    def last_updated(self, k: int) -> int:
        return self.started + k * self.config.period

    def snapshot(self, k: int) -> list[dict[str, Any]]:
        """The station_status entries of snapshot k."""
        while len(self._states) <= k:
            self._states.append(self._next_states(len(self._states)))
        updated = self.last_updated(k)
        out = []
        for station in self.config.stations:
            s = self._states[k][station["station_id"]]
            capacity = int(station["capacity"])
            out.append(
                {
                    "station_id": station["station_id"],
                    "num_bikes_available": s["bikes"],
                    "num_ebikes_available": s["ebikes"],
                    "num_bikes_disabled": s["bikes_disabled"],
                    "num_docks_available": capacity
                    - s["bikes"]
                    - s["bikes_disabled"]
                    - s["docks_disabled"],
                    "num_docks_disabled": s["docks_disabled"],
                    "is_installed": 1,
                    "is_renting": s["renting"],
                    "is_returning": s["renting"],
                    "last_reported": updated - s["report_lag"],
                }
            )
        return out

    def _next_states(self, k: int) -> dict[str, dict[str, int]]:
        states = {}
        for station in self.config.stations:
            sid = station["station_id"]
            capacity = int(station["capacity"])
            rng = random.Random(f"flowmill-gbfs:{self.config.seed}:{sid}:{k}")
            if k == 0:
                bikes_disabled = rng.randint(0, 2)
                docks_disabled = rng.randint(0, 1)
                bikes = rng.randint(0, capacity - bikes_disabled - docks_disabled)
            else:
                prev = self._states[k - 1][sid]
                bikes_disabled, docks_disabled = prev["bikes_disabled"], prev["docks_disabled"]
                room = capacity - bikes_disabled - docks_disabled
                # Rides leave and arrive a few at a time; a station drifts, it does not jump.
                bikes = min(room, max(0, prev["bikes"] + rng.randint(-4, 4)))
            states[sid] = {
                "bikes": bikes,
                "ebikes": rng.randint(0, bikes // 3),
                "bikes_disabled": bikes_disabled,
                "docks_disabled": docks_disabled,
                "renting": 0 if rng.random() < 0.04 else 1,
                "report_lag": rng.randint(0, min(20, self.config.period)),
            }
        return states


class GbfsFeed:
    """The GBFS documents of one feed at a given time."""

    def __init__(self, folder: Path, started: int | None = None) -> None:
        self.config = FeedConfig.load(folder)
        self._timeline = StatusTimeline(self.config, started) if started is not None else None
        self._lock = threading.Lock()

    @property
    def timeline(self) -> StatusTimeline | None:
        """None until the first request starts the clock."""
        return self._timeline

    def _clock(self, now: float) -> StatusTimeline:
        with self._lock:
            if self._timeline is None:
                self._timeline = StatusTimeline(self.config, int(now))
            return self._timeline

    def _static_updated(self, now: float) -> int:
        timeline = self._timeline
        return timeline.started if timeline is not None else int(now)

    @property
    def started(self) -> int | None:
        return self._timeline.started if self._timeline else None

    def document(self, feed: str, base_url: str, now: float | None = None) -> dict[str, Any]:
        """The document `feed` (one of FEEDS) as served at `now`."""
        now = time.time() if now is None else now
        ttl = self.config.period
        if feed == "station_status":
            timeline = self._clock(now)
            k = timeline.index_at(now)
            with self._lock:  # snapshots are computed once and memoised
                stations = timeline.snapshot(k)
            return self._doc(timeline.last_updated(k), ttl, {"stations": stations})
        started = self._static_updated(now)
        if feed == "station_information":
            return self._doc(started, ttl, {"stations": self.config.stations})
        if feed == "system_regions":
            return self._doc(started, ttl, {"regions": self.config.regions})
        if feed == "system_information":
            return self._doc(started, ttl, self.config.system)
        if feed == "gbfs":
            feeds = [{"name": f, "url": f"{base_url}/{f}.json"} for f in FEEDS if f != "gbfs"]
            return self._doc(started, ttl, {"en": {"feeds": feeds}})
        raise KeyError(feed)

    @staticmethod
    def _doc(last_updated: int, ttl: int, data: dict[str, Any]) -> dict[str, Any]:
        return {"last_updated": last_updated, "ttl": ttl, "version": GBFS_VERSION, "data": data}


class GbfsServer:
    """Serves a GbfsFeed over HTTP on a thread of the current process."""

    def __init__(self, folder: Path, host: str, port: int) -> None:
        self.feed = GbfsFeed(folder)
        self.folder = folder
        feed = self.feed

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == HEALTH_PATH:
                    # For probes: answers without starting the feed's clock, which the
                    # first poller's request must start.
                    self._send(200, {"ok": True})
                    return
                directory, _, name = path.rpartition("/")
                feed_name = name.removesuffix(".json")
                if not name.endswith(".json") or feed_name not in FEEDS:
                    self._send(404, {"error": f"no GBFS feed at {path}", "feeds": list(FEEDS)})
                    return
                base = f"http://{self.headers.get('Host', f'{host}:{port}')}{directory}"
                self._send(200, feed.document(feed_name, base))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("gbfs %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="gbfs", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def configure(parser: argparse.ArgumentParser) -> None:
    """`flowmill gbfs-feed`: serve a feed folder until SIGTERM or Ctrl-C."""
    parser.add_argument("folder", metavar="DIR", help="a folder holding feed.json")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = GbfsServer(Path(args.folder), args.host, args.port)
    stopped = threading.Event()
    # A pod is stopped with SIGTERM; end as promptly as for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    server.start()
    log.info("serving the GBFS feed of %s at %s/gbfs.json", args.folder, server.url)
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    server.stop()
    return 0
