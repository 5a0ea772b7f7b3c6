"""The hot path of a tumbling-window step, a batch at a time with numpy.

Per-event Python work is what limits a Python stream processor, not Kafka. For the common
shape (tumbling windows; count, sum, avg, min, max; flat key and time fields; clean
events) this module turns a batch into columns and aggregates them with numpy, leaving
about one JSON decode and a few list lookups per event. Anything else, or any event that
does not fit (malformed, missing field, text where a number should be), sends the whole
batch back to the general per-event path, which gives the same results and dead-letters
precisely the events at fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from flowmill_workers.events import MAX_EVENT_BYTES
from flowmill_workers.steps.windows import WindowAggregator, WindowBatch

_COLUMNAR_OPS = {"count", "sum", "avg", "min", "max"}
_SECONDS_LIMIT = 1e11  # below: epoch seconds, above: epoch milliseconds (as event_time_ms)


def supports(agg: WindowAggregator, has_stages: bool) -> bool:
    """Whether a step can use the columnar path at all."""
    fields = [agg.key_field, agg.time_field or ""] + [f or "" for _, _, f in agg.aggregates]
    return (
        not has_stages
        and agg.advance_ms == agg.size_ms
        and agg.time_field is not None
        and all(op in _COLUMNAR_OPS for _, op, _ in agg.aggregates)
        and not any("." in f for f in fields)
    )


def aggregate_batch(
    agg: WindowAggregator, values: list[bytes | None], watermark: int | None
) -> tuple[WindowBatch, list[int], int | None] | None:
    """(partials, indexes of late events, new watermark), or None to use the slow path."""
    if max(len(v or b"") for v in values) > MAX_EVENT_BYTES:
        return None
    loads = orjson.loads
    key_field, time_field = agg.key_field, agg.time_field
    assert time_field is not None  # supports() admits only steps with an event time
    try:
        events: list[dict[str, Any]] = [loads(v) for v in values]  # type: ignore[arg-type]
        keys = [e[key_field] for e in events]
        times = np.array([e[time_field] for e in events])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if times.dtype.kind not in "iu" and times.dtype.kind != "f":
        return None
    if any(type(k) is not str for k in keys):
        return None
    ms = np.where(np.abs(times) < _SECONDS_LIMIT, times * 1000, times).astype(np.int64)
    size = agg.size_ms
    starts = ms - ms % size
    # The watermark an event meets is the largest time seen before it (as in the per-event
    # path); late events do not move it, being older than it by definition.
    running = np.maximum.accumulate(ms)
    before = np.empty_like(ms)
    before[0] = watermark if watermark is not None else np.iinfo(np.int64).min
    before[1:] = running[:-1] if watermark is None else np.maximum(running[:-1], watermark)
    open_mask = starts + size + agg.lateness_ms > before
    if watermark is None:
        open_mask[0] = True
    new_watermark = int(running[-1]) if watermark is None else max(watermark, int(running[-1]))

    columns: dict[str, np.ndarray] = {}
    for _, op, field in agg.aggregates:
        if op != "count" and field is not None and field not in columns:
            try:
                columns[field] = np.array([e.get(field) for e in events], dtype=np.float64)
            except (TypeError, ValueError):
                return None

    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys)
    )
    names = list(index)
    open_idx = np.nonzero(open_mask)[0]
    late = np.nonzero(~open_mask)[0].tolist()
    batch = WindowBatch(late=len(late))
    if len(open_idx) == 0:
        return batch, late, new_watermark
    window_starts, start_pos = np.unique(starts[open_idx], return_inverse=True)
    group_ids = codes[open_idx] * len(window_starts) + start_pos
    groups, inverse = np.unique(group_ids, return_inverse=True)
    n_groups = len(groups)
    counts = np.bincount(inverse, minlength=n_groups)
    results: list[list[Any]] = []
    for _, op, field in agg.aggregates:
        if op == "count":
            results.append(counts.tolist())
            continue
        assert field is not None  # every aggregate but count names its field
        col = columns[field][open_idx]
        present = ~np.isnan(col)
        if op in ("sum", "avg"):
            sums = np.bincount(inverse, weights=np.where(present, col, 0.0), minlength=n_groups)
            if op == "sum":
                results.append(sums.tolist())
            else:
                ns = np.bincount(inverse, weights=present, minlength=n_groups).astype(np.int64)
                results.append([[s, n] for s, n in zip(sums.tolist(), ns.tolist(), strict=True)])
        else:
            fill = np.inf if op == "min" else -np.inf
            out = np.full(n_groups, fill)
            (np.fmin if op == "min" else np.fmax).at(out, inverse, col)
            results.append([None if np.isinf(v) else v for v in out.tolist()])
    for g, group in enumerate(groups.tolist()):
        key = names[group // len(window_starts)]
        start = int(window_starts[group % len(window_starts)])
        batch.partials[(key, start)] = [column[g] for column in results]
    return batch, late, new_watermark
