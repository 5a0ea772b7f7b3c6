"""A real S3-compatible server for the tests: SeaweedFS (`weed server -filer -s3`, one
process holding a master, a volume server, a filer and the S3 gateway) on loopback ports,
with an identity whose access key and secret are generated per run, and one bucket.

`weed` is built by `scripts/provision.sh seaweedfs`; a missing binary fails the fixture
with that hint (ComponentMissing), nothing is skipped. Loaded as a plugin from
tests/conftest.py, like the Kafka and Redis fixtures.

Everything the server writes stays in one temporary directory removed on stop: data, its
logs (`-logtostderr` into the directory's log file; glog would otherwise write to /tmp),
the filer's and gateway's local sockets. The gRPC sockets that `weed server` always puts
at /tmp/seaweedfs-{service}-grpc-{port}.sock are removed by name, since the ports are ours.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from flowmill.local import ComponentMissing, cache_dir, find_binary
from flowmill.local.ports import LOOPBACK, StartStop, free_ports, spawn, tail, terminate
from tests.harness.waiting import wait_for

REGION = "us-east-1"
START_TIMEOUT = 60.0
ATTEMPTS = 3
SERVICES = ("master", "volume", "filer", "s3")
"""The services `weed server` runs here, each with an HTTP and a gRPC port."""


class S3StartFailed(RuntimeError):
    pass


class SeaweedS3(StartStop):
    """One SeaweedFS server with the S3 gateway; `bucket` exists once start() returns."""

    def __init__(self, bucket: str = "flowmill-lake") -> None:
        self.bucket = bucket
        # The shape AWS uses (20 upper-case characters, 40 of base64), fresh for each run.
        self.access_key = "AKFM" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)[:40]
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, tuple[int, int]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._ports['s3'][0]}"

    def env(self) -> dict[str, str]:
        """What a worker needs to reach the bucket, as the operator's Secret provides it."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 client on this server, with the run's credentials."""
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            region=REGION,
            allow_bucket_creation=True,
        )

    def start(self) -> None:
        try:
            binary = find_binary("weed")
        except ComponentMissing as err:
            raise ComponentMissing(
                "weed (SeaweedFS, built by `scripts/provision.sh seaweedfs`)",
                f"{cache_dir() / 'bin'} and PATH",
            ) from err
        # A port chosen free may be taken before weed binds it: then try fresh ones.
        for attempt in range(ATTEMPTS):
            try:
                self._start_once(binary)
                return
            except S3StartFailed:
                if attempt == ATTEMPTS - 1:
                    raise

    def _start_once(self, binary: Path) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fm-s3-"))  # short: sockets live here
        (self._dir / "data").mkdir()
        config = self._dir / "s3.json"
        config.write_text(json.dumps(self._identities()))
        config.chmod(0o600)
        ports = free_ports(2 * len(SERVICES))
        self._ports = {s: (ports[2 * i], ports[2 * i + 1]) for i, s in enumerate(SERVICES)}
        argv = [str(binary), "-logtostderr", "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
        argv += [f"-dir={self._dir / 'data'}", "-filer", "-s3", f"-s3.config={config}"]
        for service, (http, grpc) in self._ports.items():
            argv += [f"-{service}.port={http}", f"-{service}.port.grpc={grpc}"]
        argv += [
            f"-filer.localSocket={self._dir / 'filer.sock'}",
            f"-s3.localSocket={self._dir / 's3.sock'}",
            # No Iceberg or Lance catalogs, no IAM API, and no usage report to
            # telemetry.seaweedfs.com: tests talk to loopback only.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            "-master.telemetry=false",
            "-volume.max=4",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",  # stop at once; nothing reads from it by then
        ]
        # Nothing of the caller's AWS or Sentry settings; os.TempDir() is the run's folder.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SENTRY_"))}
        env["TMPDIR"] = str(self._dir)
        # One volume per bucket instead of seven: the first write to a bucket waits for them.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        self._proc = spawn(argv, self._dir / "weed.log", cwd=self._dir, env=env)
        try:
            wait_for(self._bucket_ready, START_TIMEOUT, f"SeaweedFS S3 at {self.endpoint}")
        except (TimeoutError, S3StartFailed) as err:
            failure = S3StartFailed(f"weed server did not serve S3: {err}\n{self.log_tail()}")
            self.stop()
            raise failure from err

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "flowmill-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _bucket_ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise S3StartFailed(f"weed server exited with {self._proc.returncode}")
        try:
            s3 = self.filesystem()
            s3.create_dir(self.bucket)
            # The bucket's first object allocates its volume: done here, not in a test.
            probe = f"{self.bucket}/.probe"
            with s3.open_output_stream(probe) as out:
                out.write(b"ok")
            s3.delete_file(probe)
            return True
        except OSError:
            return False

    def clear(self, prefix: str) -> None:
        """Delete everything under bucket/prefix."""
        s3 = self.filesystem()
        s3.delete_dir_contents(f"{self.bucket}/{prefix}", missing_dir_ok=True)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # An open client connection can hold its graceful stop for seconds; the data is
            # thrown away anyway.
            terminate(proc, grace=2.0)
        for service, (_, grpc) in self._ports.items():
            Path(f"/tmp/seaweedfs-{service}-grpc-{grpc}.sock").unlink(missing_ok=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self._dir / "weed.log", lines) if self._dir is not None else ""


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session; tests write under prefixes of their own
    (tests.harness.waiting.unique) in its bucket."""
    with SeaweedS3() as server:
        yield server
