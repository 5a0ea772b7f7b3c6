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
| `fm:{p}:{t}:open` | zset | windows not yet announced final, member `{start}:{key}`, score = end + allowedLateness (tables that publish) |

Session tables (`window.session`) use the same per-key keys (`w`, `wi`, `keys`, `d`,
`open`), a session's hash holding `start` (its first event), `last` (its last event) and
`end` (last + gap), plus:

| key | type | holds |
|---|---|---|
| `fm:{p}:{t}:sess` | zset | every session, member `{start}:{key}`, score = its end |

Latest-state tables (a step with `latest`):

| key | type | holds |
|---|---|---|
| `fm:{p}:{t}:latest` | hash | key -> the latest event, JSON |
| `fm:{p}:{t}:updated` | zset | key -> event time (ms) of its latest event |
| `fm:{p}:{t}:geo` | geo set | key -> position, when the sink has `geo` |

Checkpoints, written in the same atomic script as the data they cover:

| key | type | holds |
|---|---|---|
| `fm:{p}:_ckpt:{step}` | hash | `{topic}:{partition}` -> next offset to process; `{topic}:{partition}:wm` -> watermark (ms); `{topic}:{partition}:seen` -> when (wall ms) a batch with events last came (steps with `window.idleTimeout`) |
| `fm:{p}:_emit:{step}` | stream | window records not yet in the step's kafka topic (`sink.kafka.emit`): fields `k` key, `s` start, `e` end, `l` last event (sessions), `f` final (`1`/`0`), `w` watermark, `v:{aggregate}` each value as stored |

A table's watermark is the smallest watermark of its step's input partitions (none until
every partition has one); a window is final once that passes its end plus
allowedLateness (`watermark_fields`, read by the workers' scripts and the API alike).

A table's completeness, for readers (the API serves it as the table's `state`):

| key | type | holds |
|---|---|---|
| `fm:{p}:{t}:_status` | hash | `rebuilding:{topic}:{partition}` -> the offset a rebuild from Kafka must reach (while the step rebuilds lost Redis state); `incomplete:{topic}:{partition}` -> JSON `{"missing_before_offset", "detected_ms"}` (Kafka no longer held what the rebuild needed) |

(`rebuilding_field`, `incomplete_field`; `table_state` reads the hash for the API and the
operator alike.)

A window aggregate whose value Redis cannot hold has `_error:{aggregate}` (the reason)
in its window hash instead of a value.

Every write to a window or session table is announced (an empty message) on channel
`fm:{p}:{t}:_changed` (`changes_channel`). Live updates are published on channel `fm:{p}:{t}` as JSON
`{"table", "key", "window": {"start", "end"} | null, "values": {...}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from flowmill.spec import Pipeline, StepSpec


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


def status_key(pipeline: str, table: str) -> str:
    """The hash of what a reader must know about a table's completeness (fields above)."""
    return f"{table_prefix(pipeline, table)}:_status"


def changes_channel(pipeline: str, table: str) -> str:
    """The channel announcing every write to a window or session table (an empty message,
    last on each batch's pipeline); the API keeps answers between announcements
    (flowmill_api.versions)."""
    return f"{table_prefix(pipeline, table)}:_changed"


REBUILDING = "rebuilding"
INCOMPLETE = "incomplete"
TableStatus = Literal["exact", "rebuilding", "incomplete"]


def rebuilding_field(topic: str, partition: int) -> str:
    """The status hash field of a partition being rebuilt from Kafka (value: the offset
    the rebuild must reach, as decimal text)."""
    return f"{REBUILDING}:{topic}:{partition}"


def incomplete_field(topic: str, partition: int) -> str:
    """The status hash field of a partition whose beginning Kafka no longer held (value:
    incomplete_value's JSON)."""
    return f"{INCOMPLETE}:{topic}:{partition}"


def incomplete_value(missing_before_offset: int, detected_ms: int) -> str:
    """The value of an incomplete_field."""
    return json.dumps(
        {"missing_before_offset": missing_before_offset, "detected_ms": detected_ms},
        separators=(",", ":"),
    )


def table_state(status: Mapping[str, str]) -> dict[str, Any] | None:
    """What a table's status hash says, for readers (the API's `state`, the Pipeline's
    status); None when the table is exact. `rebuilding`: partitions being replayed from
    Kafka after their Redis state was lost (`until_offset`: the offset the rebuild must
    reach); `incomplete`: partitions whose offsets before `missing_before_offset` Kafka
    had deleted, so what they held is missing for good."""
    rebuilding: list[dict[str, Any]] = []
    incomplete: list[dict[str, Any]] = []
    for field, value in sorted(status.items()):
        kind, _, where = field.partition(":")
        topic, _, partition = where.rpartition(":")
        if kind == REBUILDING:
            rebuilding.append(
                {"topic": topic, "partition": int(partition), "until_offset": int(value)}
            )
        elif kind == INCOMPLETE:
            detail = json.loads(value)
            incomplete.append(
                {
                    "topic": topic,
                    "partition": int(partition),
                    "missing_before_offset": int(detail["missing_before_offset"]),
                    "detected_ms": detail.get("detected_ms"),
                }
            )
    if not rebuilding and not incomplete:
        return None
    return {REBUILDING: rebuilding, INCOMPLETE: incomplete}


def table_status(state: Mapping[str, Any] | None) -> TableStatus:
    """One word for a table_state: `incomplete` outranks `rebuilding`, since it stays
    after the rebuild has caught up."""
    if state is None:
        return "exact"
    return "incomplete" if state[INCOMPLETE] else "rebuilding"


def error_field(aggregate: str) -> str:
    """The window hash field marking an aggregate whose value could not be stored."""
    return f"_error:{aggregate}"


def checkpoint_key(pipeline: str, step: str) -> str:
    """The hash of a step's per-partition offsets and watermarks."""
    return f"{prefix(pipeline)}:_ckpt:{step}"


def outbox_key(pipeline: str, step: str) -> str:
    """The stream of a step's window records waiting for its kafka topic: appended by the
    fenced table scripts, moved to Kafka (and trimmed) by the step's emitter."""
    return f"{prefix(pipeline)}:_emit:{step}"


def channel(pipeline: str, table: str) -> str:
    """The pub/sub channel of a table's live updates."""
    return f"fm:{{{pipeline}}}:{table}"


def sessions_key(pipeline: str, table: str) -> str:
    """The zset of a session table's sessions (`{start}:{key}`), scored by end."""
    return f"{table_prefix(pipeline, table)}:sess"


def open_windows_key(pipeline: str, table: str) -> str:
    """The zset of windows not yet announced final, scored by when they become final."""
    return f"{table_prefix(pipeline, table)}:open"


def watermark_field(topic: str, partition: int) -> str:
    """The checkpoint hash field of one input partition's watermark."""
    return f"{topic}:{partition}:wm"


def watermark_fields(pipeline: Pipeline, step: StepSpec) -> list[str]:
    """The checkpoint fields whose minimum is the watermark of a step's table: every
    partition of its input topic."""
    topic = pipeline.spec.topic(step.from_)
    return [watermark_field(topic.name, p) for p in range(topic.partitions)]
