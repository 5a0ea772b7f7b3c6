"""flowmill's serving API: REST, live updates and a dashboard for any Pipeline's tables.

`create_app` and `ApiSettings` are imported lazily, so `flowmill --help` (which imports
this package for its `api` subcommand) does not load FastAPI and redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowmill_api.app import create_app
    from flowmill_api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from flowmill_api.app import create_app

        return create_app
    if name == "ApiSettings":
        from flowmill_api.settings import ApiSettings

        return ApiSettings
    raise AttributeError(name)
