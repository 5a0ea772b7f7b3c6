"""Temporary directories of local servers that a killed owner cannot leave behind for good.

A process killed with SIGKILL (or the OOM killer) runs no atexit handler, so the
`flowmill-redis-*` directory of its embedded Redis stays in the temp folder. Each such
directory therefore holds an owner file naming the Python process that made it (its pid
and the kernel's start time of that pid, so a reused pid is not taken for the owner);
the next server started on this machine removes those whose owner is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = "flowmill-owner"
PREFIXES = ("flowmill-redis-", "flowmill-kafka-")
"""The temporary directories of EmbeddedRedis and EmbeddedKafka."""


def make_owned_temp_dir(prefix: str) -> Path:
    """A new temporary directory whose owner is this process; stale ones are removed first."""
    remove_stale_temp_dirs()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(_identity(os.getpid()) or f"{os.getpid()} ?")
    return path


def remove_stale_temp_dirs(root: Path | None = None) -> list[Path]:
    """Remove the servers' temporary directories whose owner process is gone; returns them.
    Directories without an owner file (made by an older flowmill) are left alone."""
    folder = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(PREFIXES)]
    except OSError:
        return []
    for path in candidates:
        try:
            owner = (path / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        if _owner_alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("removed %s, left by process %s that is gone", path, owner.split()[0])
    return removed


def _identity(pid: int) -> str | None:
    """'pid starttime' of a live process (Linux), None if it is gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (start time in clock ticks since boot); the command name may hold spaces.
    return f"{pid} {stat[stat.rindex(')') + 2 :].split()[19]}"


def _owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(" ")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if not Path("/proc").is_dir():  # no /proc: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    current = _identity(pid)
    return current is not None and (started == "?" or current == owner)
