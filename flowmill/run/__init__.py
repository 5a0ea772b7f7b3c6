"""`flowmill run`: a whole Pipeline on one machine, with no cluster.

`LocalRun` is the Python API (the CLI and the tests use it). Names are imported lazily so
that `flowmill validate` does not load the runner's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowmill.run.local_run import LOCAL_GBFS_ANNOTATION, LocalRun, RunFailed
    from flowmill.run.status_table import RowStatus, RunStatus

__all__ = ["LOCAL_GBFS_ANNOTATION", "LocalRun", "RowStatus", "RunFailed", "RunStatus"]


def __getattr__(name: str) -> Any:
    if name in ("LOCAL_GBFS_ANNOTATION", "LocalRun", "RunFailed"):
        from flowmill.run import local_run

        return getattr(local_run, name)
    if name in ("RowStatus", "RunStatus"):
        from flowmill.run import status_table

        return getattr(status_table, name)
    raise AttributeError(name)
