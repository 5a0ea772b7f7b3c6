"""The Redis serving layout: the contract between the workers' Redis sink and the API.

Everything of a Pipeline lives under `fm:{pipeline}:`; `{pipeline}` is a Redis Cluster
hash tag, so one Pipeline's keys share a slot and a sink's Lua script may touch them all.

Window tables (a step with `window` + `aggregate`):

| key | type | holds |
|---|---|---|
| `fm:{p}:{t}:w:{key}:{start}` | hash | one window: `start`, `end` (epoch ms), each aggregate's value, and internal `_`-prefixed partials (e.g. `_n:fare` for avg) |
| `fm:{p}:{t}:wi:{key}` | zset | the key's windows, score = window start (ms) |
| `fm:{p}:{t}:keys` | zset | every key, score = start of its newest window |
| `fm:{p}:{t}:top:{start}:{agg}` | zset | keys of one window, score = that aggregate's value (top-N) |
| `fm:{p}:{t}:wins` | zset | every window start seen, score = start |
| `fm:{p}:{t}:d:{key}:{start}:{agg}` | set | distinct values (distinct aggregates) |

Latest-state tables (a step with `latest`):

| key | type | holds |
|---|---|---|
| `fm:{p}:{t}:latest` | hash | key -> the latest event, JSON |
| `fm:{p}:{t}:updated` | zset | key -> event time (ms) of its latest event |
| `fm:{p}:{t}:geo` | geo set | key -> position, when the sink has `geo` |

Checkpoints, written in the same atomic script as the data they cover:

| key | type | holds |
|---|---|---|
| `fm:{p}:_ckpt:{step}` | hash | `{topic}:{partition}` -> next offset to process; `{topic}:{partition}:wm` -> watermark (ms) |

Live updates are published on channel `fm:{p}:{t}` as JSON
`{"table", "key", "window": {"start", "end"} | null, "values": {...}}`.
"""

from __future__ import annotations


def prefix(pipeline: str) -> str:
    """Every key of a Pipeline starts with this."""
    return f"fm:{{{pipeline}}}"


def table_prefix(pipeline: str, table: str) -> str:
    """Every key of one table starts with this."""
    return f"{prefix(pipeline)}:{table}"


def window_key(pipeline: str, table: str, key: str, start_ms: int) -> str:
    """The hash of one key's window."""
    return f"{table_prefix(pipeline, table)}:w:{key}:{start_ms}"


def window_index_key(pipeline: str, table: str, key: str) -> str:
    """The zset of one key's window starts."""
    return f"{table_prefix(pipeline, table)}:wi:{key}"


def keys_key(pipeline: str, table: str) -> str:
    """The zset of a table's keys."""
    return f"{table_prefix(pipeline, table)}:keys"


def windows_key(pipeline: str, table: str) -> str:
    """The zset of a table's window starts."""
    return f"{table_prefix(pipeline, table)}:wins"


def top_key(pipeline: str, table: str, start_ms: int, aggregate: str) -> str:
    """The zset ranking a window's keys by one aggregate."""
    return f"{table_prefix(pipeline, table)}:top:{start_ms}:{aggregate}"


def latest_key(pipeline: str, table: str) -> str:
    """The hash of a latest-state table."""
    return f"{table_prefix(pipeline, table)}:latest"


def updated_key(pipeline: str, table: str) -> str:
    """The zset of a latest-state table's update times."""
    return f"{table_prefix(pipeline, table)}:updated"


def geo_key(pipeline: str, table: str) -> str:
    """The geo set of a latest-state table with positions."""
    return f"{table_prefix(pipeline, table)}:geo"


def checkpoint_key(pipeline: str, step: str) -> str:
    """The hash of a step's per-partition offsets and watermarks."""
    return f"{prefix(pipeline)}:_ckpt:{step}"


def channel(pipeline: str, table: str) -> str:
    """The pub/sub channel of a table's live updates."""
    return f"fm:{{{pipeline}}}:{table}"
