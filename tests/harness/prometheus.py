"""A real Prometheus (Debian's /usr/bin/prometheus, the package that brings promtool)
scraping the targets of a file_sd file the caller keeps current: the pods of the node
(tests/harness/metrics_stack.py) or the workers of a local run (their metrics ports).

Debian builds Prometheus without Kubernetes service discovery, which is why targets come
from a file. A missing binary raises ComponentMissing, which tests report as a failure.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from flowmill.local import ComponentMissing
from flowmill.local.ports import LOOPBACK, StartStop, free_ports, spawn, terminate
from tests.harness.kube import wait_started
from tests.harness.waiting import http_ok

PROMETHEUS = Path("/usr/bin/prometheus")


def prometheus_config(targets: Path, interval: str, rules: Path | None) -> dict[str, Any]:
    """Scrape the targets listed in `targets` (file service discovery) every `interval`."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": interval}],
            }
        ],
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    return config


class PrometheusServer(StartStop):
    """Prometheus on a free port of `host`, its config, data and log under `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = LOOPBACK,
        scrape_interval: str = "2s",
        rules: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.dir = directory
        self.host = host
        self.scrape_interval = scrape_interval
        self.rules = rules
        self.start_timeout = start_timeout
        self.targets = directory / "targets.json"
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        if not PROMETHEUS.is_file():
            raise ComponentMissing("prometheus (Debian package prometheus)", str(PROMETHEUS))
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.targets.exists():
            self.write_targets([])
        (port,) = free_ports(1)
        self.url = f"http://{self.host}:{port}"
        config = self.dir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(prometheus_config(self.targets, self.scrape_interval, self.rules))
        )
        log_path = self.dir / "prometheus.log"
        argv = [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'tsdb'}",
            f"--web.listen-address={self.host}:{port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        self._proc = spawn(argv, log_path, cwd=self.dir)
        url = self.url
        try:
            wait_started(
                "prometheus", self._proc, log_path, lambda: http_ok(f"{url}/-/ready"),
                self.start_timeout,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, 10.0)
            self._proc = None

    def write_targets(self, groups: list[dict[str, Any]]) -> None:
        """Replace the scraped targets: file_sd groups, {"targets": [...], "labels": {...}}."""
        # Written aside and renamed: Prometheus never reads half a file.
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.targets.with_suffix(".tmp")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's samples: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        assert self.url is not None, "Prometheus has not started"
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The query's single value (summed over its samples), None without samples."""
        samples = self.query(promql)
        return sum(float(s["value"][1]) for s in samples) if samples else None
