"""A user module for the `function` escape hatch, importable as tests.workers.udf."""

from __future__ import annotations

from typing import Any


def split_legs(event: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One event per leg; events without legs are dropped; a bad leg count raises."""
    legs = event.get("legs", 0)
    if legs == 0:
        return None
    if legs < 0:
        raise ValueError(f"negative legs: {legs}")
    return [{"trip": event["trip"], "leg": i} for i in range(legs)]
