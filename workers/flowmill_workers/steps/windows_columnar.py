"""The hot path of a tumbling- or hopping-window step, a batch at a time.

Per-event Python work is what limits a Python stream processor, not Kafka: decoding each
value into a dict and reading fields out of it cost more than fetching it. For the common
shape (tumbling or hopping windows; count, sum, avg, min, max; flat key, time and value
fields) this module decodes a whole batch at once into just the fields the step reads
(msgspec, typed, one line-delimited buffer: no dict and no key strings per event) and
aggregates the columns with numpy.

Anything it cannot be sure of sends the whole batch back to the per-event path, which
gives the same results and dead-letters precisely the events at fault, with their reason:
a value that is not one JSON object, invalid UTF-8, a missing key or time, a key that is
not a string, a value that is not a number or null, an oversized payload.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from flowmill_workers.events import MAX_EVENT_BYTES
from flowmill_workers.steps.windows import WindowAggregator, WindowBatch

_COLUMNAR_OPS = {"count", "sum", "avg", "min", "max"}
_SECONDS_LIMIT = 1e11  # below: epoch seconds, above: epoch milliseconds (as event_time_ms)
_EXACT_FLOAT = 2.0**53  # float times beyond it would not round as the per-event path does
_OPEN, _CLOSE = ord("{"), ord("}")


def supports(agg: WindowAggregator, has_stages: bool) -> bool:
    """Whether a step can use the columnar path at all."""
    value_fields = {f for _, op, f in agg.aggregates if op != "count" and f}
    fields = [agg.key_field, agg.time_field or "", *value_fields]
    return (
        not has_stages
        and agg.time_field is not None
        and not value_fields & {agg.key_field, agg.time_field}
        and all(op in _COLUMNAR_OPS for _, op, _ in agg.aggregates)
        and not any("." in f for f in fields)
    )


class Columns:
    """A batch decoded into the step's columns: keys, event times (ms) and each value
    field as float64 (NaN where null or absent)."""

    __slots__ = ("keys", "ms", "values")

    def __init__(self, keys: list[str], ms: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self.keys = keys
        self.ms = ms
        self.values = values


class ColumnDecoder:
    """Decodes a batch's JSON values into Columns, or None when the per-event path must
    decide (see the module docstring)."""

    def __init__(self, key_field: str, time_field: str, value_fields: list[str]) -> None:
        self.value_fields = value_fields
        # Attribute names are f0, f1, ...: JSON field names need not be identifiers.
        spec: list[Any] = [("f0", str), ("f1", int | float)]
        rename = {"f0": key_field, "f1": time_field}
        for i, name in enumerate(value_fields, start=2):
            spec.append((f"f{i}", float | None, None))
            rename[f"f{i}"] = name
        # gc=False: rows hold only str, int, float and None, never a cycle, so the
        # collector need not track (and scan) ten thousand of them per batch.
        row = msgspec.defstruct("Row", spec, rename=rename, gc=False)
        self._decoder = msgspec.json.Decoder(row)
        self._getters = [attrgetter(f"f{i}") for i in range(len(value_fields) + 2)]

    def decode(self, values: list[bytes | None]) -> Columns | None:
        n = len(values)
        if n == 0 or None in values:
            return None
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        if int(lengths.max()) > MAX_EVENT_BYTES or int(lengths.min()) < 2:
            return None
        joined = b"\n".join(values)  # type: ignore[arg-type]
        # Every value must begin with '{' and end with '}'. Then, joined by newlines, no
        # two values can parse as one (after a '}', a newline and a '{' are valid only
        # between top-level values: inside an array a comma is missing, inside an object
        # a key; and a raw newline cannot be inside a JSON string), while a value holding
        # two objects parses as two rows: so as many rows as values means row i is value i.
        buf = np.frombuffer(joined, dtype=np.uint8)
        ends = np.cumsum(lengths + 1) - 1
        if not (np.all(buf[ends - lengths] == _OPEN) and np.all(buf[ends - 1] == _CLOSE)):
            return None
        try:
            joined.decode("utf-8")  # as orjson, every byte of the value, fields unread too
            rows = self._decoder.decode_lines(joined)
        except (UnicodeDecodeError, msgspec.DecodeError):  # ValidationError included
            return None
        if len(rows) != n:
            return None
        get = self._getters
        keys: list[str] = list(map(get[0], rows))
        try:
            times = np.array(list(map(get[1], rows)))
        except OverflowError:  # integers beyond int64: the per-event path decides
            return None
        if times.dtype.kind == "f":
            if not np.all(np.abs(times) < _EXACT_FLOAT):
                return None
            ms = np.where(np.abs(times) < _SECONDS_LIMIT, times * 1000, times).astype(np.int64)
        elif times.dtype.kind == "i":
            small = np.abs(times) < _SECONDS_LIMIT
            ms = np.where(small, times * 1000, times)
        else:
            return None
        # numpy reads None as NaN when asked for float64.
        columns = {
            name: np.array(list(map(get[i], rows)), dtype=np.float64)
            for i, name in enumerate(self.value_fields, start=2)
        }
        return Columns(keys, ms, columns)


def decoder_for(agg: WindowAggregator) -> ColumnDecoder:
    assert agg.time_field is not None  # supports() admits only steps with an event time
    fields = list(dict.fromkeys(f for _, op, f in agg.aggregates if op != "count" and f))
    return ColumnDecoder(agg.key_field, agg.time_field, fields)


Late = list[tuple[int, int, int]]
"""Late events: (index in the batch, event time ms, the watermark it met)."""


def aggregate_batch(
    agg: WindowAggregator,
    decoder: ColumnDecoder,
    values: list[bytes | None],
    watermark: int | None,
) -> tuple[WindowBatch, Late, int | None] | None:
    """(partials, late events, new watermark), or None to use the slow path."""
    cols = decoder.decode(values)
    if cols is None:
        return None
    return aggregate_columns(agg, cols, watermark)


def aggregate_columns(
    agg: WindowAggregator, cols: Columns, watermark: int | None
) -> tuple[WindowBatch, Late, int | None]:
    ms = cols.ms
    n = len(ms)
    size, advance = agg.size_ms, agg.advance_ms
    # The watermark an event meets is the largest time seen before it (as in the per-event
    # path); late events do not move it, being older than it by definition.
    running = np.maximum.accumulate(ms)
    before = np.empty_like(ms)
    before[0] = watermark if watermark is not None else np.iinfo(np.int64).min
    before[1:] = running[:-1] if watermark is None else np.maximum(running[:-1], watermark)
    new_watermark = int(running[-1]) if watermark is None else max(watermark, int(running[-1]))

    # Each event's windows: the newest start at or before it, then one advance back per
    # hop while the window still contains it (WindowAggregator.window_starts).
    last = ms - ms % advance
    hops = -(-size // advance)  # the most windows one event can be in
    event_idx, starts = [], []
    for h in range(hops):
        start = last - h * advance
        contains = start + size > ms
        # The first event ever meets no watermark: `before` is int64's minimum there.
        is_open = start + size + agg.lateness_ms > before
        keep = np.nonzero(contains & is_open)[0]
        event_idx.append(keep)
        starts.append(start[keep])
    if hops > 1:
        # Back in event order, so each window's sum adds its events in the order the
        # per-event path does (the same float, to the last bit).
        idx = np.concatenate(event_idx)
        order = np.argsort(idx, kind="stable")
        idx, all_starts = idx[order], np.concatenate(starts)[order]
    else:
        idx, all_starts = event_idx[0], starts[0]
    has_window = np.zeros(n, dtype=bool)
    has_window[idx] = True
    late_idx = np.nonzero(~has_window)[0]
    # (index, event time, the watermark it met): the per-event path's dead-letter reason.
    late = list(
        zip(late_idx.tolist(), ms[late_idx].tolist(), before[late_idx].tolist(), strict=True)
    )
    batch = WindowBatch(late=len(late))
    if len(idx) == 0:
        return batch, late, new_watermark

    names = list(dict.fromkeys(cols.keys))
    position = {k: i for i, k in enumerate(names)}
    codes = np.fromiter(map(position.__getitem__, cols.keys), dtype=np.int64, count=n)
    window_starts, start_pos = np.unique(all_starts, return_inverse=True)
    n_starts = len(window_starts)
    group_ids = codes[idx] * n_starts + start_pos
    dense = len(names) * n_starts
    if dense <= 4 * len(group_ids) + 1024:
        # Few (key, window) pairs: count into a dense table, no sort.
        counts_all = np.bincount(group_ids, minlength=dense)
        groups = np.nonzero(counts_all)[0]
        remap = np.empty(dense, dtype=np.int64)
        remap[groups] = np.arange(len(groups))
        inverse = remap[group_ids]
        counts = counts_all[groups]
    else:
        groups, inverse = np.unique(group_ids, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(groups))
    n_groups = len(groups)
    results: list[list[Any]] = []
    for _, op, field in agg.aggregates:
        if op == "count":
            results.append(counts.tolist())
            continue
        assert field is not None  # every aggregate but count names its field
        col = cols.values[field][idx]
        present = ~np.isnan(col)
        if op in ("sum", "avg"):
            sums = np.bincount(inverse, weights=np.where(present, col, 0.0), minlength=n_groups)
            if op == "sum":
                results.append(sums.tolist())
            else:
                ns = np.bincount(inverse, weights=present, minlength=n_groups).astype(np.int64)
                results.append([[s, c] for s, c in zip(sums.tolist(), ns.tolist(), strict=True)])
        else:
            out = np.full(n_groups, np.nan)
            # fmin/fmax ignore NaN (null or absent), so a group of only those stays NaN.
            (np.fmin if op == "min" else np.fmax).at(out, inverse, col)
            results.append([None if v != v else v for v in out.tolist()])
    starts_list = window_starts.tolist()
    rows = list(zip(*results, strict=True))
    for g, group in enumerate(groups.tolist()):
        key = names[group // n_starts]
        batch.partials[(key, starts_list[group % n_starts])] = list(rows[g])
    return batch, late, new_watermark
